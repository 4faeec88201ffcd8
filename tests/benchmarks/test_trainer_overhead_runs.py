"""Smoke test of benchmarks/trainer_overhead.py: it runs, prints a ratio, and its baseline does the trainer's work."""

import pytest

BENCHMARK = "trainer_overhead"


def test_tiny_regime_prints_a_ratio_and_matches_the_trainer_losses(benchmark, tmp_path, capsys):
    results = benchmark.main(
        ["--regime", "tiny", "--steps", "3", "--warmup", "1", "--cache-dir", str(tmp_path / "cache")]
    )
    output = capsys.readouterr().out
    assert "regime tiny" in output
    assert "ratio" in output and "us/step" in output
    tiny = results["tiny"]
    assert len(tiny.trainer_s) == len(tiny.reference_s) == 3
    # Same weights, optimizer settings and batches: the plain loop must reproduce the trainer's losses exactly.
    assert tiny.max_loss_difference == 0.0


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--warmup", "-1"], ["--regime", "huge"], ["--threads", "0"]])
def test_bad_arguments_are_rejected(benchmark, argv, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert "error" in capsys.readouterr().err
