"""Smoke test of benchmarks/pretokenize.py (4M): it runs, prints both sides and their ratio, both sides give the same
codes, and its comparison does catch codes that really disagree."""

import re

import numpy as np
import pytest
import torch

BENCHMARK = "pretokenize"
TINY = ["--images", "12", "--batch-size", "5", "--rounds", "2", "--samples", "4", "--samples-per-shard", "2"]


def test_tiny_run_prints_both_rates_a_positive_ratio_and_identical_codes(benchmark, restore_threads, capsys):
    result = benchmark.main([*TINY, "--threads", "1"])
    output = capsys.readouterr().out
    assert re.search(r"batched \(A\)\s+\d+\s+\d+", output) and re.search(r"one at a time \(B\)\s+\d+\s+\d+", output)
    assert re.search(r"ratio batched/one-at-a-time\s+\d+\.\d+\s+\d+\.\d+", output)
    assert re.search(r"end to end: pretokenize_4m over 4 samples x 5 crops .*: \d+ samples/s", output)
    assert len(result.batched_s) == len(result.one_at_a_time_s) == 2
    assert result.median_ratio > 0 and result.best_ratio > 0 and result.end_to_end_samples_per_s > 0
    assert result.total_codes == 12 * 8 * 8
    # Exactly equal, or differing only where two codes are float near-ties (batch 1 and 5 run other conv kernels).
    assert result.near_ties_only
    assert f"codes identical: {result.codes_identical}" in output


def test_assignment_gaps_are_empty_for_equal_codes_and_large_for_codes_of_other_crops(benchmark):
    tokenizer, size = benchmark.build_tokenizer()
    crops = benchmark.render_crops(4, size)
    with torch.inference_mode():
        codes = benchmark.encode_crops(tokenizer, crops, 4)
        single = benchmark.encode_one_at_a_time(tokenizer, crops)
    assert np.array_equal(codes, single) or benchmark.assignment_gaps(tokenizer, crops, codes, single).max() < 1e-4
    assert benchmark.assignment_gaps(tokenizer, crops, codes, codes).size == 0
    shifted = np.roll(codes, 1, axis=0)  # each crop gets its neighbour's codes: a batching bug
    gaps = benchmark.assignment_gaps(tokenizer, crops, codes, shifted)
    assert gaps.size == np.count_nonzero(codes != shifted) > 0
    assert gaps.max() > benchmark.TIE_TOLERANCE


@pytest.mark.parametrize(
    "argv",
    [
        ["--images", "0"],
        ["--rounds", "0"],
        ["--batch-size", "0"],
        ["--threads", "0"],
        ["--samples-per-shard", "0"],
        ["--family", "4m"],
    ],
)
def test_bad_arguments_are_rejected(benchmark, argv, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert "error" in capsys.readouterr().err
