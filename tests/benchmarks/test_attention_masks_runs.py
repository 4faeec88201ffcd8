"""Smoke test of benchmarks/attention_masks.py: on a tiny LLM it prints both sides' loss, their agreement and the
time per step, and the causal-mask side computes the loss and gradients of the dense-mask side; its memory formulas
count the bytes of real masks."""

import re

import torch

from polymodal.models.layers.mask_rules import DocumentCausalRule, flex_block_mask

BENCHMARK = "attention_masks"
TINY = ["--dim", "32", "--depth", "2", "--heads", "4", "--seq-len", "16", "--batch-size", "2", "--vocab", "64"]


def test_tiny_run_prints_equal_losses_and_times(benchmark, capsys, restore_threads):
    result = benchmark.main([*TINY, "--rounds", "2", "--threads", "1"])
    output = capsys.readouterr().out
    losses = re.search(r"loss: causal (\d+\.\d+), dense (\d+\.\d+)", output)
    assert losses and losses[1] == losses[2]
    assert re.search(r"one-document check \(A\) \d+, dense mask build \(B\) \d+", output)
    for label in (r"causal mask, is_causal \(A\)", r"dense bool mask \(B\)", r"ratio B/A \(speed-up\)"):
        assert re.search(rf"{label}\s+\d+\.\d+\s+\d+\.\d+", output)
    assert result.max_difference < 1e-5
    assert len(result.step_s[0]) == len(result.step_s[1]) == 2


def test_mask_bytes_are_the_bytes_of_the_real_masks(benchmark):
    """The formulas of the memory table against the tensors they count, at sizes this machine builds quickly."""
    for batch, seq_len in ((1, 256), (2, 384), (3, 200)):
        documents = (torch.arange(seq_len) >= seq_len // 3).long().expand(batch, seq_len)
        rule = DocumentCausalRule(documents)
        block_mask = flex_block_mask(rule)
        block_mask_bytes = sum(t.numel() * t.element_size() for t in block_mask.as_tuple() if torch.is_tensor(t))
        predicted = benchmark.mask_bytes(batch, seq_len)
        dense = rule.dense()
        assert predicted["dense bool [B,1,T,T]"] == dense.numel() * dense.element_size()
        assert predicted["FlexAttention block mask (128-token blocks)"] == block_mask_bytes
    assert benchmark.mask_bytes(1, 8192)["dense bool [B,1,T,T]"] == 64 * 1024**2
