"""Token heads + their loss: the chunked path (labelled positions only, a chunk at a time) against full logits.

``--model lm`` (default): the LM head and next-token loss. Both sides are the code a training step runs, on the
same head weight, hidden states and targets (about ``--labelled`` of the positions labelled, the rest ``-100``),
with Lumina-mGPT's z-loss weight (1e-5):

* (A) chunked: ``VocabularyHead(loss_chunk_size=--chunk-size, loss_z_loss_weight=...)`` writes the loss sums of
  ``polymodal.models.token_loss.chunked_token_loss``, computing their gradients in the forward pass as the shipped
  configs do, and ``NextTokenLoss`` turns them into the loss;
* (B) ``--against full`` (default): the same head with ``loss_chunk_size=None`` writes ``[B, T, V]`` logits and
  ``NextTokenLoss`` takes the loss from them in float32 (cross-entropy, a log-sum-exp for the z-loss, an arg-max
  for the accuracy); ``--against recompute``: the chunked head without ``loss_z_loss_weight``, which recomputes each
  chunk's logits in backward.

A step is forward + backward (gradients of the hidden states and the weight).

``--model fourm``: a whole 4M training step (``build_fourm(--size)``, 4M-7's token modalities at upstream's
vocabulary sizes, caption and det of ``--seq-tokens``, ``--tokens`` input and target tokens per sample, batches
masked by ``FourMMasking``), forward + backward through the whole model, two ways on the same weights and batch:

* (A) chunked: ``FourM(loss_chunk_size=--chunk-size)`` hands each modality's decoder rows and head weight to
  ``chunked_token_loss``; ``FourMLoss`` combines the sums;
* (B) full: a copy with ``loss_chunk_size=None`` writes each modality's ``[n, V]`` logits and the loss is
  ``F.cross_entropy`` on them in float32, as ``FourMLoss`` took it before (``fourm_logits_loss``).

The script prints both losses and the largest relative difference (``max |A - B| / max |B|`` per tensor) over the
loss, the metrics (LM) and the gradients, then:

* **peak memory** of one step, beyond what existed before it (inputs, weight): on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU the peak of the running sum of the allocation and free events
  of torch's profiler (``profile_memory=True``), i.e. every byte torch's allocator handed out for tensors during
  the step and had not yet got back, in time order. It counts tensor memory only, not the Python heap or what the
  allocator keeps cached, and it is measured in a separate, untimed step (the profiler slows the step down);
* **time per step**: the sides alternate A/B, B/A, ... for ``--rounds`` rounds after one untimed warm-up step each
  (``timing.compare``); median and best seconds, and the ratios.

    python benchmarks/chunked_loss.py              # 8 x 1024 positions, dim 512, vocabulary 65,536; ~2 minutes
    python benchmarks/chunked_loss.py --positions 2048 --vocab 16384 --rounds 5
    python benchmarks/chunked_loss.py --against recompute   # gradients in forward vs recomputed in backward
    python benchmarks/chunked_loss.py --model fourm          # 4M tiny, 16 x (128 + 128) tokens
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from masking import build_masking, build_registry, synthetic_batch
from timing import compare, measuring, parse_with_threads
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from polymodal.families.fourm.loss import FourMLoss
from polymodal.families.fourm.model import SIZES, FourM, build_fourm
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
    """One path: ``step()`` runs the head with the loss, forward and backward, and returns the loss; ``outputs()``
    runs a step and returns what it computed (:attr:`compared`)."""

    compared = "loss, metrics and gradients"  # what :meth:`outputs` returns
    label = "chunked"  # how the printout names this side

    def __init__(self, device: torch.device):
        self.device = device

    def seconds(self) -> float:
        started = time.perf_counter()
        self.step()
        _synchronize(self.device)
        return time.perf_counter() - started


class LMSide(Side):
    """A head over the shared weight with ``NextTokenLoss``."""

    def __init__(
        self, weight: torch.nn.Parameter, chunk_size: int | None, hidden: Tensor, targets: Tensor, forward_grads: bool
    ):
        super().__init__(hidden.device)
        self.label = "full" if chunk_size is None else "chunked" if forward_grads else "recompute"
        z_weight = Z_LOSS_WEIGHT if forward_grads else None
        self.head = VocabularyHead(
            weight.shape[1], weight.shape[0], loss_chunk_size=chunk_size, loss_z_loss_weight=z_weight
        )
        self.head.proj.weight = weight
        self.objective = NextTokenLoss(z_loss_weight=Z_LOSS_WEIGHT)
        self.hidden, self.targets = hidden, targets
        self.metrics: dict[str, Tensor] = {}

    def step(self) -> Tensor:
        self.hidden.grad = self.head.proj.weight.grad = None
        loss, self.metrics = self.objective(self.head({"hidden": self.hidden, "target_ids": self.targets}))
        loss.backward()
        return loss.detach()

    def outputs(self) -> list[Tensor]:
        """Loss, metrics and gradients of one step, in a fixed order."""
        loss = self.step()
        metrics = [self.metrics[name] for name in sorted(self.metrics)]
        return [loss, *metrics, self.hidden.grad, self.head.proj.weight.grad]


def fourm_logits_loss(logits: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Tensor:
    """4M's loss (``mode="modality"``) as ``FourMLoss`` took it from full logits before the chunked head: the mean
    over the modalities with targets of ``F.cross_entropy`` on each one's float32 logits, plus ``0 * sum(logits)``."""
    means = [F.cross_entropy(logits[name].float(), targets[name]) for name in logits if targets[name].numel()]
    anchor = sum(value.sum() for value in logits.values()) * 0.0
    return sum(means) / max(len(means), 1) + anchor


class FourMSide(Side):
    """A 4M training step; with ``loss_chunk_size`` the model writes the loss sums, else logits for
    :func:`fourm_logits_loss`."""

    compared = "loss and gradients"

    def __init__(self, model: FourM, batch: dict[str, dict[str, Tensor]]):
        super().__init__(model.mask_token.device)
        self.model, self.batch = model, batch
        self.label = "full" if model.loss_chunk_size is None else "chunked"
        self.objective = FourMLoss()

    def step(self) -> Tensor:
        self.model.zero_grad(set_to_none=True)
        output = self.model(dict(self.batch))
        if self.model.loss_chunk_size is None:
            loss = fourm_logits_loss(output["logits"], output["targets"])
        else:
            loss = self.objective(output)[0]
        loss.backward()
        return loss.detach()

    def outputs(self) -> list[Tensor]:
        """Loss and every parameter's gradient of one step, in a fixed order."""
        return [self.step(), *(param.grad for param in self.model.parameters())]


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


def build_lm(args: argparse.Namespace, device: torch.device) -> tuple[Side, Side, str]:
    generator = torch.Generator().manual_seed(0)
    batch = args.positions // args.seq_len
    hidden = torch.randn(batch, args.seq_len, args.dim, generator=generator).to(device).requires_grad_()
    weight = torch.nn.Parameter((torch.randn(args.vocab, args.dim, generator=generator) * 0.02).to(device))
    targets = torch.randint(args.vocab, (batch, args.seq_len), generator=generator)
    targets[torch.rand(targets.shape, generator=generator) >= args.labelled] = -100
    targets = targets.to(device)
    labelled = int((targets != -100).sum())
    what = (
        f"LM head: {batch} x {args.seq_len} positions ({labelled} labelled), dim {args.dim}, vocabulary "
        f"{args.vocab}, chunk {args.chunk_size}, z-loss {Z_LOSS_WEIGHT:g}, float32 on {device}"
    )
    ours = LMSide(weight, args.chunk_size, hidden, targets, forward_grads=True)
    recompute = args.against == "recompute"
    baseline = LMSide(weight, args.chunk_size if recompute else None, hidden, targets, forward_grads=False)
    return ours, baseline, f"{what}; B: {'chunked, logits recomputed in backward' if recompute else 'full logits'}"


def build_fourm_sides(args: argparse.Namespace, device: torch.device) -> tuple[Side, Side, str]:
    registry = build_registry(args.seq_tokens)
    masked = build_masking(registry, args.tokens)(
        synthetic_batch(registry, args.batch, seed=0), torch.Generator().manual_seed(0)
    )
    batch = {name: {key: value.to(device) for key, value in entry.items()} for name, entry in masked.items()}
    torch.manual_seed(0)
    sizes = {} if args.dim is None else {"dim": args.dim}
    model = build_fourm(args.size, registry, num_encoder_tokens=args.tokens, num_decoder_tokens=args.tokens,
                        loss_chunk_size=args.chunk_size, **sizes).to(device)  # fmt: skip
    full = copy.deepcopy(model)
    full.loss_chunk_size = None
    targets = sum(int(entry["is_target"].sum()) for entry in batch.values())
    vocabularies = ", ".join(f"{name} {spec.vocab_size}" for name, spec in registry.items())
    what = (
        f"4M {args.size} (dim {model.dim}): batch {args.batch}, {args.tokens} input + {args.tokens} target tokens "
        f"per sample ({targets} target positions before the cut), chunk {args.chunk_size}, float32 on {device}\n"
        f"  vocabularies: {vocabularies}"
    )
    return FourMSide(model, batch), FourMSide(full, batch), what


def run(args: argparse.Namespace) -> Result:
    device = torch.device(args.device)
    chunked, full, what = (build_fourm_sides if args.model == "fourm" else build_lm)(args, device)
    print(what, flush=True)
    ours, theirs = chunked.outputs(), full.outputs()  # also the warm-up step of each
    difference = max(_relative_difference(a, b) for a, b in zip(ours, theirs, strict=True))
    loss = ours[0].item()
    a, b = chunked.label, full.label
    print(f"loss: {a} {loss:.7f}, {b} {theirs[0].item():.7f}, |difference| {abs(loss - theirs[0].item()):.1e}")
    print(f"max relative difference over {chunked.compared}: {difference:.1e}", flush=True)
    del ours, theirs

    peaks = (peak_bytes(chunked.step, device), peak_bytes(full.step, device))
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "profiler allocation events"
    print(f"peak memory of a step ({how}), MiB:")
    print(f"  {a + ' (A)':12}{peaks[0] / MIB:10.1f}\n  {b + ' (B)':12}{peaks[1] / MIB:10.1f}")
    print(f"  ratio {b}/{a} {peaks[1] / peaks[0]:.1f}", flush=True)

    timings = compare(chunked.seconds, full.seconds, args.rounds)
    print(f"time per step (forward + backward), s, over {args.rounds} rounds:")
    print(f"  {'':12}{'median':>9}{'best':>9}")
    for label, seconds in ((f"{a} (A)", timings.ours_s), (f"{b} (B)", timings.baseline_s)):
        print(f"  {label:12}{statistics.median(seconds):9.3f}{min(seconds):9.3f}")
    median_ratio = statistics.median(timings.ours_s) / statistics.median(timings.baseline_s)
    best_ratio = min(timings.ours_s) / min(timings.baseline_s)
    print(f"  {'ratio A/B':12}{median_ratio:9.2f}{best_ratio:9.2f}", flush=True)
    return Result(loss, difference, peaks, (timings.ours_s, timings.baseline_s))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("lm", "fourm"), default="lm", help="the LM head, or a whole 4M step")
    parser.add_argument("--dim", type=int, default=None, help="width (default: 512 for lm, the size's for fourm)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="labelled positions per chunk")
    lm = parser.add_argument_group("--model lm")
    lm.add_argument("--positions", type=int, default=8 * 1024, help="B x T positions (default 8 x 1024)")
    lm.add_argument("--seq-len", type=int, default=1024, help="T; --positions must be a multiple of it")
    lm.add_argument("--vocab", type=int, default=65536)
    lm.add_argument("--labelled", type=float, default=0.5, help="share of positions with a target")
    lm.add_argument(
        "--against",
        choices=("full", "recompute"),
        default="full",
        help="B: full logits, or the chunked head that recomputes its logits in backward",
    )
    fourm = parser.add_argument_group("--model fourm")
    fourm.add_argument("--size", choices=sorted(SIZES), default="tiny", help="4M size (trunk widths and depths)")
    fourm.add_argument("--batch", type=int, default=16, help="samples per step")
    fourm.add_argument("--tokens", type=int, default=128, help="input and target tokens per sample")
    fourm.add_argument("--seq-tokens", type=int, default=256, help="max_tokens of caption and det")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parse_with_threads(parser, argv, ())
    if args.model == "lm" and args.dim is None:
        args.dim = 512
    if args.positions % args.seq_len:
        parser.error(f"--positions {args.positions} is not a multiple of --seq-len {args.seq_len}")
    return args


def main(argv: Sequence[str] | None = None) -> Result:
    """Run both sides with ``--threads`` torch threads, print the report and return the measurements."""
    args = parse_args(argv)
    with measuring(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
