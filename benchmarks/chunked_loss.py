"""The LM head + next-token loss: the chunked path (labelled positions only, a chunk at a time) against full logits.

Both sides are the code a training step runs, on the same head weight, hidden states and targets (about
``--labelled`` of the positions labelled, the rest ``-100``), with Lumina-mGPT's z-loss weight (1e-5):

* (A) chunked: ``VocabularyHead(loss_chunk_size=--chunk-size)`` writes the loss sums of
  ``polymodal.models.token_loss.chunked_token_loss`` and ``NextTokenLoss`` turns them into the loss;
* (B) full: the same head with ``loss_chunk_size=None`` writes ``[B, T, V]`` logits and ``NextTokenLoss`` takes
  the loss from them in float32 (cross-entropy, a log-sum-exp for the z-loss, an arg-max for the accuracy).

A step is forward + backward (gradients of the hidden states and the weight). The script prints both losses and
the largest relative difference (``max |A - B| / max |B|`` per tensor) over the loss, the metrics and the
gradients, then:

* **peak memory** of one step, beyond what existed before it (inputs, weight): on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU the peak of the running sum of the allocation and free events
  of torch's profiler (``profile_memory=True``), i.e. every byte torch's allocator handed out for tensors during
  the step and had not yet got back, in time order. It counts tensor memory only, not the Python heap or what the
  allocator keeps cached, and it is measured in a separate, untimed step (the profiler slows the step down);
* **time per step**: the sides alternate A/B, B/A, ... for ``--rounds`` rounds after one untimed warm-up step each
  (``timing.compare``); median and best seconds, and the ratios.

    python benchmarks/chunked_loss.py              # 8 x 1024 positions, dim 512, vocabulary 65,536; ~2 minutes
    python benchmarks/chunked_loss.py --positions 2048 --vocab 16384 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from timing import compare, platform_line
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from polymodal.models.parts import VocabularyHead
from polymodal.objectives.lm import NextTokenLoss

Z_LOSS_WEIGHT = 1e-5  # Lumina-mGPT's
MIB = 1024**2


@dataclass
class Result:
    loss: float
    max_difference: float  # relative, over loss, metrics and gradients
    peak_bytes: tuple[int, int]  # chunked, full
    step_s: tuple[list[float], list[float]]  # chunked, full


class Side:
    """One path: a head over the shared weight, and a step that runs it with the loss, forward and backward."""

    def __init__(self, weight: torch.nn.Parameter, chunk_size: int | None, hidden: Tensor, targets: Tensor):
        self.head = VocabularyHead(weight.shape[1], weight.shape[0], loss_chunk_size=chunk_size)
        self.head.proj.weight = weight
        self.objective = NextTokenLoss(z_loss_weight=Z_LOSS_WEIGHT)
        self.hidden, self.targets = hidden, targets

    def step(self) -> tuple[Tensor, dict[str, Tensor]]:
        self.hidden.grad = self.head.proj.weight.grad = None
        loss, metrics = self.objective(self.head({"hidden": self.hidden, "target_ids": self.targets}))
        loss.backward()
        return loss.detach(), metrics

    def outputs(self) -> list[Tensor]:
        """Loss, metrics and gradients of one step, in a fixed order."""
        loss, metrics = self.step()
        return [loss, *(metrics[name] for name in sorted(metrics)), self.hidden.grad, self.head.proj.weight.grad]

    def seconds(self) -> float:
        started = time.perf_counter()
        self.step()
        _synchronize(self.hidden.device)
        return time.perf_counter() - started


def _relative_difference(ours: Tensor, theirs: Tensor) -> float:
    """``max |ours - theirs| / max |theirs|`` (0 when both are 0: an all-ignored batch)."""
    scale = float(theirs.double().abs().max())
    return float((ours.double() - theirs.double()).abs().max()) / scale if scale else float(ours.abs().max())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """The most memory ``step`` holds at once beyond what was allocated before it (module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = [event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"]
    allocated = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        allocated += event.nbytes()
        peak = max(peak, allocated)
    return peak


def build(args: argparse.Namespace, device: torch.device) -> tuple[Side, Side]:
    generator = torch.Generator().manual_seed(0)
    batch = args.positions // args.seq_len
    hidden = torch.randn(batch, args.seq_len, args.dim, generator=generator).to(device).requires_grad_()
    weight = torch.nn.Parameter((torch.randn(args.vocab, args.dim, generator=generator) * 0.02).to(device))
    targets = torch.randint(args.vocab, (batch, args.seq_len), generator=generator)
    targets[torch.rand(targets.shape, generator=generator) >= args.labelled] = -100
    targets = targets.to(device)
    return Side(weight, args.chunk_size, hidden, targets), Side(weight, None, hidden, targets)


def run(args: argparse.Namespace) -> Result:
    device = torch.device(args.device)
    print(platform_line(), flush=True)
    chunked, full = build(args, device)
    labelled = int((chunked.targets != -100).sum())
    print(
        f"{chunked.hidden.shape[0]} x {args.seq_len} positions ({labelled} labelled), dim {args.dim}, vocabulary "
        f"{args.vocab}, chunk {args.chunk_size}, z-loss {Z_LOSS_WEIGHT:g}, float32 on {device}",
        flush=True,
    )
    ours, theirs = chunked.outputs(), full.outputs()  # also the warm-up step of each
    difference = max(_relative_difference(a, b) for a, b in zip(ours, theirs, strict=True))
    loss = ours[0].item()
    print(f"loss: chunked {loss:.7f}, full {theirs[0].item():.7f}, |difference| {abs(loss - theirs[0].item()):.1e}")
    print(f"max relative difference over loss, metrics and gradients: {difference:.1e}", flush=True)
    del ours, theirs

    peaks = (peak_bytes(chunked.step, device), peak_bytes(full.step, device))
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "profiler allocation events"
    print(f"peak memory of a step ({how}), MiB:")
    print(f"  chunked (A) {peaks[0] / MIB:10.1f}\n  full (B)    {peaks[1] / MIB:10.1f}")
    print(f"  ratio full/chunked {peaks[1] / peaks[0]:.1f}", flush=True)

    timings = compare(chunked.seconds, full.seconds, args.rounds)
    print(f"time per step (forward + backward), s, over {args.rounds} rounds:")
    print(f"  {'':12}{'median':>9}{'best':>9}")
    for label, seconds in (("chunked (A)", timings.ours_s), ("full (B)", timings.baseline_s)):
        print(f"  {label:12}{statistics.median(seconds):9.3f}{min(seconds):9.3f}")
    median_ratio = statistics.median(timings.ours_s) / statistics.median(timings.baseline_s)
    best_ratio = min(timings.ours_s) / min(timings.baseline_s)
    print(f"  {'ratio A/B':12}{median_ratio:9.2f}{best_ratio:9.2f}", flush=True)
    return Result(loss, difference, peaks, (timings.ours_s, timings.baseline_s))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=8 * 1024, help="B x T positions (default 8 x 1024)")
    parser.add_argument("--seq-len", type=int, default=1024, help="T; --positions must be a multiple of it")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--labelled", type=float, default=0.5, help="share of positions with a target")
    parser.add_argument("--chunk-size", type=int, default=1024, help="labelled positions per chunk")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.positions % args.seq_len:
        parser.error(f"--positions {args.positions} is not a multiple of --seq-len {args.seq_len}")
    return args


def main(argv: Sequence[str] | None = None) -> Result:
    """Run both sides with ``--threads`` torch threads, print the report and return the measurements."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
