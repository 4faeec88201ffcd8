"""The LLM's training step with one-document rows: the ``CausalMask`` fast path against the dense document mask.

Both sides are the same ``CausalLM`` (same modules, same weights) on the same batch, whose every row is one
document:

* (A) causal: the model as built; ``DocumentCausalMask`` sees one document per row (one host sync of a bool) and
  writes a ``CausalMask``, so every block runs SDPA with ``is_causal`` and no mask tensor exists;
* (B) dense: the model with its mask block swapped for one that always writes the ``[B, 1, T, T]`` bool document
  mask, as every batch did before (``DenseDocumentMask`` below); SDPA then takes the mask in every block.

First it prints what each kind of mask costs in memory at 8k and 32k tokens (:func:`mask_bytes`, the table of
``docs/attention.md``). A step is forward (the head's chunked next-token loss, ``NextTokenLoss`` with z-loss) and
backward. The script prints both losses and the largest relative difference over the loss and the gradients; then
the sides alternate A/B, B/A, ... for ``--rounds`` rounds after one untimed warm-up step each
(``timing.compare``): median and best seconds and their ratio. Defaults: the d512 LLM of issue 17 (dim 512,
8 layers, 8 heads, T 256, B 8, vocabulary 8192), float32.

    python benchmarks/attention_masks.py --threads 2          # ~2 minutes on 2 CPU cores
    python benchmarks/attention_masks.py --seq-len 1024 --batch-size 2 --rounds 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timing import compare, measuring, parse_with_threads
from torch import Tensor

from polymodal.models.layers.mask_rules import FLEX_BLOCK_SIZE, one_document_per_row
from polymodal.models.layers.masks import document_mask
from polymodal.models.llm import CausalLM, build_llm
from polymodal.models.meta import DataDict
from polymodal.models.parts import DocumentCausalMask
from polymodal.objectives.lm import NextTokenLoss

Z_LOSS_WEIGHT = 1e-5
MIB = 1024**2
TABLE_SEQ_LENS = (8192, 32768)


def mask_bytes(batch_size: int, seq_len: int, block_size: int = FLEX_BLOCK_SIZE) -> dict[str, int]:
    """Bytes of each attention mask of ``batch_size`` rows of ``seq_len`` tokens (shared by all heads): the dense
    bool ``[B, 1, T, T]`` mask; the additive bias SDPA makes of it in the query dtype (bf16, fp32), which CUDA's
    memory-efficient kernel keeps for backward in every layer; a FlexAttention block mask (eight int32 tensors:
    for each of partial and full blocks, the count and the indices of the key blocks per query block and of the
    query blocks per key block, ``16·B·(n² + n)`` for ``n = ⌈T / block⌉``); a ``CausalMask`` (no tensor)."""
    blocks = math.ceil(seq_len / block_size)
    dense = batch_size * seq_len**2
    return {
        "dense bool [B,1,T,T]": dense,
        "additive bias, bf16 (per layer)": 2 * dense,
        "additive bias, fp32 (per layer)": 4 * dense,
        f"FlexAttention block mask ({block_size}-token blocks)": 16 * batch_size * (blocks**2 + blocks),
        "CausalMask (is_causal)": 0,
    }


def mask_table(batch_size: int = 1, seq_lens: Sequence[int] = TABLE_SEQ_LENS) -> list[str]:
    """:func:`mask_bytes` as a markdown table in MiB, one column per sequence length."""
    columns = {seq_len: mask_bytes(batch_size, seq_len) for seq_len in seq_lens}
    header = f"| mask (per sample) | {' | '.join(f'T = {seq_len:,}' for seq_len in seq_lens)} |"
    lines = [header, "|---|" + "---:|" * len(seq_lens)]
    for name in columns[seq_lens[0]]:
        cells = " | ".join(f"{columns[seq_len][name] / MIB:,.3f} MiB" for seq_len in seq_lens)
        lines.append(f"| {name} | {cells} |")
    return lines


class DenseDocumentMask(DocumentCausalMask):
    """The baseline's mask block: always the dense bool document mask, whatever the rows hold."""

    def forward(self, data: DataDict) -> DataDict:
        data[self.write_keys[0]] = document_mask(data[self.read_keys[0]], causal=True)
        return data


@dataclass
class Result:
    loss: float
    max_difference: float  # relative, over the loss and every gradient
    step_s: tuple[list[float], list[float]]  # causal, dense


class Side:
    """One model (sharing the other side's modules) and a training step of it on the shared batch."""

    def __init__(self, model: CausalLM, batch: DataDict):
        self.model, self.batch = model, batch
        self.objective = NextTokenLoss(z_loss_weight=Z_LOSS_WEIGHT)

    def step(self) -> Tensor:
        self.model.zero_grad(set_to_none=True)
        loss, _ = self.objective(self.model(dict(self.batch)))
        loss.backward()
        return loss.detach()

    def outputs(self) -> list[Tensor]:
        loss = self.step()
        return [loss, *(param.grad.clone() for param in self.model.parameters())]

    def seconds(self) -> float:
        started = time.perf_counter()
        self.step()
        if self.batch["input_ids"].device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started


def _relative_difference(ours: Tensor, theirs: Tensor) -> float:
    scale = float(theirs.double().abs().max())
    return float((ours.double() - theirs.double()).abs().max()) / scale if scale else float(ours.abs().max())


def mask_microseconds(document_ids: Tensor, repeats: int = 200) -> tuple[float, float]:
    """Median µs of what each side's mask block does with ``document_ids``: (A) the one-document check (with its
    host sync), (B) building the dense mask (synchronised on CUDA, so the build is finished)."""

    def dense() -> None:
        document_mask(document_ids, causal=True)
        if document_ids.device.type == "cuda":
            torch.cuda.synchronize()

    def seconds(step) -> float:
        started = time.perf_counter()
        step()
        return time.perf_counter() - started

    timings = compare(lambda: seconds(lambda: one_document_per_row(document_ids)), lambda: seconds(dense), repeats)
    return 1e6 * statistics.median(timings.ours_s), 1e6 * statistics.median(timings.baseline_s)


def build(args: argparse.Namespace, device: torch.device) -> tuple[Side, Side]:
    torch.manual_seed(0)
    model = build_llm(
        args.vocab, args.dim, args.depth, args.heads, max_seq_len=args.seq_len, loss_chunk_size=args.seq_len
    ).to(device)
    embed, _ = model.preprocessor.blocks
    dense = CausalLM(embed, DenseDocumentMask(), model.trunk, model.head)  # the same modules: the same weights
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(args.vocab, (args.batch_size, args.seq_len + 1), generator=generator)
    batch = {
        "input_ids": tokens[:, :-1],
        "target_ids": tokens[:, 1:],
        "document_ids": torch.arange(args.batch_size)[:, None].expand(-1, args.seq_len),  # one document per row
        "position_ids": torch.arange(args.seq_len).expand(args.batch_size, -1),
    }
    batch = {key: value.contiguous().to(device) for key, value in batch.items()}
    return Side(model, batch), Side(dense, batch)


def run(args: argparse.Namespace) -> Result:
    device = torch.device(args.device)
    print("memory of one sample's attention mask:")
    print("\n".join(mask_table()), flush=True)
    causal, dense = build(args, device)
    print(
        f"LLM dim {args.dim}, {args.depth} layers, {args.heads} heads, vocabulary {args.vocab}; batch "
        f"{args.batch_size} x {args.seq_len} tokens, one document per row; float32 on {device}",
        flush=True,
    )
    ours, theirs = causal.outputs(), dense.outputs()  # also the warm-up step of each
    difference = max(_relative_difference(a, b) for a, b in zip(ours, theirs, strict=True))
    loss = ours[0].item()
    print(f"loss: causal {loss:.7f}, dense {theirs[0].item():.7f}")
    print(f"max relative difference over loss and gradients: {difference:.1e}", flush=True)
    del ours, theirs
    check_us, dense_us = mask_microseconds(causal.batch["document_ids"])
    print(f"mask block, median µs: one-document check (A) {check_us:.0f}, dense mask build (B) {dense_us:.0f}")

    timings = compare(causal.seconds, dense.seconds, args.rounds)
    print(f"time per step (forward + backward), s, over {args.rounds} rounds:")
    print(f"  {'':26}{'median':>9}{'best':>9}")
    sides = (("causal mask, is_causal (A)", timings.ours_s), ("dense bool mask (B)", timings.baseline_s))
    for label, seconds in sides:
        print(f"  {label:26}{statistics.median(seconds):9.3f}{min(seconds):9.3f}")
    median_ratio = statistics.median(timings.baseline_s) / statistics.median(timings.ours_s)
    best_ratio = min(timings.baseline_s) / min(timings.ours_s)
    print(f"  {'ratio B/A (speed-up)':26}{median_ratio:9.2f}{best_ratio:9.2f}", flush=True)
    return Result(loss, difference, (timings.ours_s, timings.baseline_s))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parse_with_threads(parser, argv, ("dim", "depth", "heads", "seq_len", "batch_size", "vocab", "rounds"))


def main(argv: Sequence[str] | None = None) -> Result:
    """Run both sides with ``--threads`` torch threads, print the report and return the measurements."""
    args = parse_args(argv)
    with measuring(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
