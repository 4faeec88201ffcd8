"""Smoke test of benchmarks/ar_generation.py: it runs and prints both comparisons, and each baseline draws the same
tokens as the side it is compared with."""

import re

import pytest
import torch

BENCHMARK = "ar_generation"


def test_tiny_run_prints_both_ratios_and_the_sides_agree(benchmark, capsys):
    threads = torch.get_num_threads()
    result = benchmark.main(["--batch-size", "2", "--prompt-tokens", "4", "--new-tokens", "6", "--rounds", "2"])
    output = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # restored
    for label in ("cached \\(A\\)", "recomputed \\(B\\)", "one batch \\[cond; uncond\\] \\(A\\)", "two passes \\(B\\)"):
        assert re.search(rf"{label}\s+\d+\s+\d+", output)
    assert len(re.findall(r"ratio A/B\s+\d+\.\d+\s+\d+\.\d+", output)) == 2
    assert result.cache_tokens_identical and result.guidance_tokens_identical
    assert len(result.cache.ours_s) == len(result.guidance.baseline_s) == 2


def test_each_baseline_draws_the_tokens_of_its_side(benchmark):
    model = benchmark.build_model()
    cond, uncond = benchmark.prompts(3, 5)
    with torch.no_grad():
        assert torch.equal(benchmark.cached(model, cond, 5), benchmark.recomputed(model, cond, 5))
        one_batch = benchmark.guided_one_batch(model, cond, uncond, 3.0, 5)
        assert torch.equal(one_batch, benchmark.guided_two_passes(model, cond, uncond, 3.0, 5))
        assert benchmark.LAYOUT.is_image_code(one_batch.numpy()).all()


@pytest.mark.parametrize("argv", [["--new-tokens", "0"], ["--rounds", "0"], ["--threads", "0"]])
def test_bad_arguments_are_rejected(benchmark, argv, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert "error" in capsys.readouterr().err
