"""Long offline work shows progress off a terminal too: plain lines on stderr, a tenth of the way apart."""

from polymodal.cli import main
from polymodal.progress import progress


def test_plain_lines_every_tenth_and_at_the_end(capsys):
    with progress("rendering", total=20, terminal=False) as advance:
        for _ in range(20):
            advance(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10 and lines[0].startswith("rendering: 2/20 (10%)") and "left" in lines[0]
    assert lines[-1].startswith("rendering: 20/20 (100%)") and lines[-1].endswith("s")


def test_synth_reports_progress_in_a_log(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path / "scenes"), "--num-samples", "8", "--samples-per-shard", "4"]
    assert main([*argv, "--size", "16", "--workers", "1", "--modalities", "rgb"]) == 0
    assert "writing shards: 8/8 (100%)" in capsys.readouterr().err
