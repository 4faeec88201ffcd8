"""Smoke test of benchmarks/masking.py: it runs and prints both sides, and both sides mask validly and alike when
fed the same budgets."""

import random
import re

import torch

BENCHMARK = "masking"
TINY = ["--batch-size", "8", "--tokens", "24", "--seq-tokens", "8"]


def test_tiny_run_prints_both_sides_and_the_ratio(benchmark, capsys):
    threads = torch.get_num_threads()
    result = benchmark.main([*TINY, "--rounds", "2", "--batches", "1"])
    output = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # restored
    assert re.search(r"ours, batched \(A\)\s+\d+\s+\d+", output)
    assert re.search(r"per-sample loop \(B\)\s+\d+\s+\d+", output)
    assert re.search(r"ratio ours/baseline\s+\d+\.\d+\s+\d+\.\d+", output)
    assert len(result.ours_s) == len(result.baseline_s) == 2 and min(result.ours_s + result.baseline_s) > 0


def test_t5_caption_inputs_follow_the_budget_on_both_sides(benchmark):
    registry = benchmark.build_registry(8, t5_caption=True)
    masking = benchmark.build_masking(registry, 24)
    raw = benchmark.synthetic_batch(registry, 16, seed=1)
    budgets = masking.sample_budgets(benchmark.parse_raw_batch(registry, raw), torch.Generator().manual_seed(1))
    has_input = budgets.input[:, list(registry).index("t5_caption")] > 0
    ours = benchmark.ours_with_budgets(masking, raw, budgets, seed=2)["t5_caption"]
    baseline = benchmark.baseline_mask(registry, raw, budgets, random.Random(3))["t5_caption"]
    for masked in (ours, baseline):
        assert torch.equal(masked["is_input"].any(1), has_input) and not masked["is_target"].any()
    assert ours["tensor"] is raw["t5_caption"] and (ours["row_index"][~ours["is_input"]] == -1).all()
    assert (baseline["tensor"][~baseline["is_input"]] == 0).all()


def sequence_parts(masked, b):
    n_in, n_tg = int(masked["is_input"][b].sum()), int(masked["is_target"][b].sum())
    assert masked["is_input"][b, :n_in].all() and masked["is_target"][b, n_in : n_in + n_tg].all()
    assert (masked["tensor"][b, n_in + n_tg :] == 0).all()
    return masked["tensor"][b, :n_in].tolist(), masked["tensor"][b, n_in : n_in + n_tg].tolist()


def test_both_sides_mask_validly_and_alike_on_the_same_budgets(benchmark):
    registry = benchmark.build_registry(8)
    masking = benchmark.build_masking(registry, 24)
    raw = benchmark.synthetic_batch(registry, 64, seed=1)
    parsed = benchmark.parse_raw_batch(registry, raw)
    budgets = masking.sample_budgets(parsed, torch.Generator().manual_seed(1))
    ours = benchmark.ours_with_budgets(masking, raw, budgets, seed=2)
    torch.manual_seed(3)
    baseline = benchmark.baseline_mask(registry, raw, budgets, random.Random(3))
    identical_rows = 0
    for column, (name, spec) in enumerate(registry.items()):
        b_in, b_tg = budgets.input[:, column], budgets.target[:, column]
        for side in (ours, baseline):
            masked = side[name]
            assert not (masked["is_input"] & masked["is_target"]).any()
            if spec.is_image:
                assert torch.equal(masked["is_input"].sum(1), b_in) and torch.equal(masked["is_target"].sum(1), b_tg)
                continue
            assert masked["tensor"].shape == (64, spec.num_positions())
            for b in range(64):
                inputs, targets = sequence_parts(masked, b)
                assert len(inputs) <= b_in[b] and len(targets) <= b_tg[b]
                assert not targets or benchmark.sentinel_id(1) <= targets[0] <= benchmark.sentinel_id(199)
        if spec.is_sequence:
            # no input budget and room for the whole target: nothing is random, so both sides agree exactly
            lengths = (raw[name] != 0).sum(1)
            fixed = (b_in == 0) & (b_tg >= lengths + 2)
            for key in ("tensor", "is_input", "is_target"):
                assert torch.equal(ours[name][key][fixed], baseline[name][key][fixed])
            identical_rows += int(fixed.sum())
    assert identical_rows > 0


def test_baseline_budgets_keep_the_invariants(benchmark):
    registry = benchmark.build_registry(8)
    torch.manual_seed(0)
    budgets = benchmark.baseline_budgets(registry, 24, 200, random.Random(0))
    caps = torch.tensor([spec.num_positions() if spec.is_image else spec.max_tokens for spec in registry.values()])
    assert (budgets.input <= caps).all() and (budgets.input.sum(1) <= 24).all()
    assert (budgets.input.sum(1) == 24).float().mean() > 0.5  # a cap rarely binds (then upstream drops)
    is_image = torch.tensor([spec.is_image for spec in registry.values()])
    assert ((budgets.input + budgets.target)[:, is_image] <= caps[is_image]).all()
