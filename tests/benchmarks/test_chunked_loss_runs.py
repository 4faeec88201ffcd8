"""Smoke test of benchmarks/chunked_loss.py: on tiny sizes it prints both sides' loss, their agreement, peak memory
and time per step, and the two sides compute the same loss and gradients."""

import re

BENCHMARK = "chunked_loss"
TINY = ["--positions", "96", "--seq-len", "32", "--dim", "8", "--vocab", "50", "--chunk-size", "7", "--rounds", "2"]


def test_tiny_run_prints_equal_losses_peaks_and_times(benchmark, capsys):
    result = benchmark.main(TINY)
    output = capsys.readouterr().out
    losses = re.search(r"loss: chunked (\d+\.\d+), full (\d+\.\d+)", output)
    assert losses and abs(float(losses[1]) - float(losses[2])) < 1e-5
    assert re.search(r"max relative difference over loss, metrics and gradients: \d\.\de-\d+", output)
    for label in ("chunked \\(A\\)", "full \\(B\\)"):
        assert re.search(rf"{label}\s+\d+\.\d\n", output)  # peak MiB
        assert re.search(rf"{label}\s+\d+\.\d{{3}}\s+\d+\.\d{{3}}", output)  # median and best seconds
    assert re.search(r"ratio full/chunked \d+\.\d", output) and re.search(r"ratio A/B\s+\d+\.\d+\s+\d+\.\d+", output)
    assert result.max_difference < 1e-5
    assert min(result.peak_bytes) > 0 and len(result.step_s[0]) == len(result.step_s[1]) == 2


def test_against_the_recomputing_head_both_sides_agree(benchmark, capsys):
    result = benchmark.main([*TINY, "--against", "recompute"])
    output = capsys.readouterr().out
    assert "B: chunked, logits recomputed in backward" in output
    assert re.search(r"loss: chunked \d+\.\d+, recompute \d+\.\d+", output)
    assert re.search(r"recompute \(B\)\s+\d+\.\d{3}\s+\d+\.\d{3}", output)
    assert result.max_difference < 1e-5


def test_an_all_ignored_batch_is_loss_zero_on_both_sides(benchmark, capsys):
    result = benchmark.main([*TINY, "--labelled", "0", "--rounds", "1"])
    assert result.loss == 0.0 and result.max_difference == 0.0


FOURM_TINY = ["--model", "fourm", "--dim", "48", "--batch", "2", "--tokens", "16", "--seq-tokens", "8",
              "--chunk-size", "7", "--rounds", "1"]  # fmt: skip


def test_fourm_step_prints_equal_losses_peaks_and_times(benchmark, capsys):
    """A whole 4M step: the chunked head loss against F.cross_entropy on full logits, on the same weights."""
    result = benchmark.main(FOURM_TINY)
    output = capsys.readouterr().out
    assert "4M tiny (dim 48): batch 2, 16 input + 16 target tokens" in output
    losses = re.search(r"loss: chunked (\d+\.\d+), full (\d+\.\d+)", output)
    assert losses and abs(float(losses[1]) - float(losses[2])) < 1e-5
    assert re.search(r"max relative difference over loss and gradients: \d\.\de-\d+", output)
    assert re.search(r"ratio full/chunked \d+\.\d", output) and re.search(r"ratio A/B\s+\d+\.\d+\s+\d+\.\d+", output)
    assert result.max_difference < 1e-4  # relative to each gradient's largest entry; some are ~1e-5 in size
    assert min(result.peak_bytes) > 0 and len(result.step_s[0]) == len(result.step_s[1]) == 1
