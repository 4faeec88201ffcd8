"""Trainer overhead: ``Trainer.train_step`` against a plain hand-written PyTorch loop doing the same work.

Protocol (shared/reference/field.md §3.2): one process builds a Trainer from ``configs/llm/tiny.yaml`` resized to
a regime, and a reference loop over a deep copy of the trainer's model (identical weights), an optimizer built
by the same config factory (identical settings and param groups), the same loss object, and its own loader over
the same token corpus in the same position (so both pay the data cost and see the same batches). After warm-up
the two alternate step by step, swapping which goes first every pair; each step is timed from its start to the
end of the optimizer update. Because both consume identical batches from identical weights, their losses must
match step for step, which checks that the baseline really does the trainer's work.

Regimes: ``tiny`` is overhead-dominated (its µs/step difference is the framework cost), ``small`` is
compute-dominated (its ratio is what a real run feels). Data: the built-in stdlib-docstring source of the config,
cached under ``--cache-dir`` after the first build (a few seconds).

    python benchmarks/trainer_overhead.py                 # both regimes, under ~3 minutes on 2 CPU cores
    python benchmarks/trainer_overhead.py --regime tiny --steps 500
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import DictConfig
from timing import alternate, check_at_least, measuring, parse_with_threads
from torch import nn

from polymodal.config import instantiate, load_config
from polymodal.data.text.packed import PackedSequenceLoader
from polymodal.files import cache_root
from polymodal.train.schedules import Schedule
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "llm" / "tiny.yaml"
TARGET_RATIO = 1.03
StepOutput = TypeVar("StepOutput")
RUN_LENGTH = 100_000  # experiment.total_steps: sets the lr schedule and puts every periodic action past the end


@dataclass(frozen=True)
class Regime:
    dim: int
    depth: int
    seq_len: int
    batch_size: int
    vocab_size: int  # the LM head and softmax dominate a tiny model: a small vocab keeps it overhead-dominated
    default_steps: int  # measured steps per side when --steps is not given; sized for the ~3 minute budget


REGIMES: dict[str, Regime] = {
    "tiny": Regime(dim=64, depth=2, seq_len=64, batch_size=4, vocab_size=800, default_steps=500),
    "small": Regime(dim=256, depth=4, seq_len=256, batch_size=8, vocab_size=2048, default_steps=30),
}


def regime_config(regime: Regime, output_dir: Path, cache_dir: Path, device: str) -> DictConfig:
    """The tiny LLM config resized to ``regime``; logging, eval and checkpoints only at step ``RUN_LENGTH``.

    The benchmark calls ``train_step`` directly, so those periodic actions never run; the settings keep the
    config honest about that.
    """
    overrides = [
        f"constants.dim={regime.dim}",
        f"constants.depth={regime.depth}",
        f"constants.seq_len={regime.seq_len}",
        f"constants.batch_size={regime.batch_size}",
        f"constants.vocab_size={regime.vocab_size}",
        f"constants.cache_dir={cache_dir}",
        f"experiment.output_dir={output_dir}",
        f"experiment.device={device}",
        f"experiment.total_steps={RUN_LENGTH}",
        f"experiment.log_every={RUN_LENGTH}",
        f"experiment.eval_every={RUN_LENGTH}",
        f"experiment.ckpt_every={RUN_LENGTH}",
        "experiment.resume=none",
        "experiment.tensorboard=false",
        "experiment.peak_flops=1.0e12",
    ]
    return load_config(CONFIG, overrides)


@dataclass
class ReferenceLoop:
    """What a hand-written loop holds: model, optimizer, loss, loader, schedule, step counter."""

    model: nn.Module
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loader: PackedSequenceLoader
    device: torch.device
    total_steps: int
    max_grad_norm: float
    step: int = 0

    def train_step(self) -> torch.Tensor:
        multiplier = self.schedule(self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier * group["lr_scale"]
        batch = {name: tensor.to(self.device) for name, tensor in next(self.loader).items()}
        loss, _ = self.objective(self.model(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.detach()


def reference_loop_for(trainer: Trainer, optimizer_config: DictConfig) -> ReferenceLoop:
    """A reference loop that starts exactly where ``trainer`` stands: same weights, optimizer settings, data."""
    exp = trainer.exp
    if exp.grad_accum_steps != 1 or exp.precision != "fp32" or exp.torch_compile:
        raise ValueError(
            "the reference loop mirrors fp32, eager, grad_accum_steps=1 training only; got "
            f"experiment.precision={exp.precision}, torch_compile={exp.torch_compile}, "
            f"grad_accum_steps={exp.grad_accum_steps}"
        )
    model = copy.deepcopy(trainer.model)  # deepcopy keeps the tied embedding/head weight tied
    source = trainer.data.train
    loader = PackedSequenceLoader(
        source.corpus, source.seq_len, source.batch_size, source.seed, source.dp_rank, source.dp_world, source.shuffle
    )
    loader.load_state_dict(source.state_dict())
    return ReferenceLoop(
        model=model,
        objective=trainer.objective,
        optimizer=instantiate(optimizer_config, model=model),
        schedule=trainer.schedule,
        loader=loader,
        device=trainer.env.device,
        total_steps=exp.total_steps,
        max_grad_norm=exp.grad_clip if exp.grad_clip > 0 else math.inf,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], StepOutput], device: torch.device) -> tuple[float, StepOutput]:
    """Seconds one step takes until its device work is done, and what the step returned."""
    started = time.perf_counter()
    output = step()
    _synchronize(device)
    return time.perf_counter() - started, output


@dataclass
class Measurement:
    """Per-step seconds of both sides (pair ``i`` ran on the same batch), plus the trainer's data wait."""

    trainer_s: list[float]
    reference_s: list[float]
    trainer_data_wait_s: float
    max_loss_difference: float  # over all steps, warm-up included: 0 when both do exactly the same work


def measure(trainer: Trainer, reference: ReferenceLoop, warmup: int, steps: int) -> Measurement:
    """Alternate trainer and reference steps, swapping which goes first every pair; time the last ``steps`` pairs."""
    device = trainer.env.device
    result = Measurement([], [], 0.0, 0.0)
    pairs = alternate(
        lambda: timed(trainer.train_step, device), lambda: timed(reference.train_step, device), warmup + steps
    )
    for pair, ((trainer_time, stats), (reference_time, reference_loss)) in enumerate(pairs):
        loss_difference = float((stats["loss"] - reference_loss).abs())
        result.max_loss_difference = max(result.max_loss_difference, loss_difference)
        if pair >= warmup:
            result.trainer_s.append(trainer_time)
            result.reference_s.append(reference_time)
            result.trainer_data_wait_s += float(stats["data_wait_s"])
    return result


def report(name: str, regime: Regime, n_params: int, warmup: int, result: Measurement) -> str:
    """Median and min step times, their ratios, and the per-step overhead (median of paired differences)."""
    trainer_median = statistics.median(result.trainer_s)
    reference_median = statistics.median(result.reference_s)
    trainer_min, reference_min = min(result.trainer_s), min(result.reference_s)
    median_ratio = trainer_median / reference_median
    paired_overhead = statistics.median(t - r for t, r in zip(result.trainer_s, result.reference_s, strict=True))
    verdict = "holds" if median_ratio <= TARGET_RATIO else "does NOT hold"
    return "\n".join(
        [
            f"regime {name}: dim={regime.dim} depth={regime.depth} seq_len={regime.seq_len} "
            f"batch={regime.batch_size} vocab={regime.vocab_size}, {n_params / 1e6:.2f}M params, "
            f"{len(result.trainer_s)} measured steps each after {warmup} warm-up",
            f"  {'':10}{'median ms':>11}{'min ms':>10}",
            f"  {'trainer':10}{trainer_median * 1e3:11.3f}{trainer_min * 1e3:10.3f}",
            f"  {'baseline':10}{reference_median * 1e3:11.3f}{reference_min * 1e3:10.3f}",
            f"  {'ratio':10}{median_ratio:11.3f}{trainer_min / reference_min:10.3f}"
            f"   target median ratio <= {TARGET_RATIO}: {verdict}",
            f"  overhead  {paired_overhead * 1e6:+.0f} us/step (median of paired differences), "
            f"{(trainer_min - reference_min) * 1e6:+.0f} us/step (difference of mins)",
            f"  trainer data wait {100 * result.trainer_data_wait_s / sum(result.trainer_s):.1f}% of its step time; "
            f"max |loss difference| trainer vs baseline {result.max_loss_difference:.3g}",
        ]
    )


def run_regime(name: str, steps: int | None, warmup: int, cache_dir: Path, device: str) -> Measurement:
    regime = REGIMES[name]
    steps = regime.default_steps if steps is None else steps
    with tempfile.TemporaryDirectory(prefix=f"trainer-overhead-{name}-") as output_dir:
        cfg = regime_config(regime, Path(output_dir), cache_dir, device)
        trainer = Trainer(cfg)
        reference = reference_loop_for(trainer, cfg.optim.optimizer)
        result = measure(trainer, reference, warmup, steps)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(report(name, regime, n_params, warmup, result), flush=True)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=[*REGIMES, "both"], default="both", help="which model size to run")
    default_steps = ", ".join(f"{name} {regime.default_steps}" for name, regime in REGIMES.items())
    parser.add_argument("--steps", type=int, default=None, help=f"measured steps per side (default: {default_steps})")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per side before measuring")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=cache_root(),
        help="where the stdlib tokenizer and token corpus are cached (default: the user cache)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parse_with_threads(parser, argv, ("steps",))
    check_at_least(parser, args, ("warmup",), minimum=0)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Measurement]:
    """Run the chosen regimes, print one report each, and return their measurements by regime name."""
    args = parse_args(argv)
    names = list(REGIMES) if args.regime == "both" else [args.regime]
    with measuring(args.threads):
        return {
            name: run_regime(name, args.steps, args.warmup, args.cache_dir.resolve(), args.device) for name in names
        }


if __name__ == "__main__":
    main()
