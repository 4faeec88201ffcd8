"""Smoke test of benchmarks/reference_step.py: on tiny sizes both cases print their sides' step times and the
ratio, the LLM sides have the same parameter count, and the plain 4M step trains to a finite loss."""

import argparse
import re

import torch

BENCHMARK = "reference_step"
TINY = ["--dim", "32", "--depth", "1", "--heads", "2", "--seq-len", "16", "--batch", "2", "--vocab", "128",
        "--fourm-dim", "24", "--fourm-batch", "2", "--tokens", "8", "--seq-tokens", "8",
        "--rounds", "2", "--warmup", "1", "--threads", "1"]  # fmt: skip
SECONDS = r"\s+(\d+\.\d{3})\s+(\d+\.\d{3})\n"


def test_tiny_run_prints_times_and_ratios_of_both_cases(benchmark, capsys, restore_threads):
    results = benchmark.main(TINY)
    output = capsys.readouterr().out
    counts = re.search(r"LLM d32 L1 H2 T16 B2 V128: ours ([\d,]+) params, transformers Llama ([\d,]+) params", output)
    assert counts and counts[1] == counts[2]
    assert re.search(r"4M tiny \(dim 24, 6\+6 blocks\): batch 2, 8 input \+ 8 target tokens", output)
    for label in ("ours \\(polymodal LLM\\)", "transformers Llama", "ours \\(polymodal 4M\\)", "plain 4M"):
        times = re.search(label + SECONDS, output)
        assert times and 0 < float(times[2]) <= float(times[1]), label
    ratios = re.findall(r"ratio ours/theirs\s+(\d+\.\d+)\s+(\d+\.\d+)", output)
    assert len(ratios) == 2 and all(float(value) > 0 for pair in ratios for value in pair)
    assert set(results) == {"llm", "fourm"} and all(len(result.ours_s) == 2 for result in results.values())


def test_plain_fourm_step_gives_a_finite_loss_that_falls(benchmark, restore_threads):
    """The plain side really trains: its loss is finite and a few AdamW steps lower it on the same batch."""
    args = argparse.Namespace(size="tiny", fourm_dim=24, fourm_batch=2, tokens=8, seq_tokens=8, compile=False)
    _, plain, _ = benchmark.fourm_sides(args)
    losses = [plain.step().item() for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_profile_splits_each_side_into_matmul_attention_and_other(benchmark, capsys, restore_threads):
    argv = [*TINY[: TINY.index("--fourm-dim")], "--rounds", "1", "--warmup", "1", "--threads", "1"]
    results = benchmark.main(["--model", "llm", "--profile", "--profile-steps", "1", *argv])
    output = capsys.readouterr().out
    ours, theirs = results["llm"].splits
    for split in (ours, theirs):
        assert split.matmul_s > 0 and split.attention_s > 0 and split.other_s > 0
        assert split.total_s == split.matmul_s + split.attention_s + split.other_s
    floor = re.search(r"floor \(matmul\+attn of theirs\)\s+(\d\.\d\d)", output)
    assert floor and float(floor[1]) == round((theirs.matmul_s + theirs.attention_s) / theirs.total_s, 2)
