"""A logging window: the sums of the per-step statistics since the last log line, and the numbers logged from them."""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from collections.abc import Mapping

import torch
from torch.distributed.tensor import DTensor

from polymodal.distributed.env import all_reduce_mean
from polymodal.train.mfu import mfu


def plain(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value as a plain tensor (statistics are logged and compared as plain tensors)."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory on ``device``, else the process's peak resident memory (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak RSS


class StepWindow:
    """The steps since the last log line: their statistics summed (tensors stay on device) and the time they took.

    ``dp_world`` and ``world_size`` turn per-rank counts into global rates, ``peak_flops`` is one device's peak
    (for MFU), ``tokens_per_sample`` is ``None`` when the data is not tokens.
    """

    def __init__(
        self, device: torch.device, dp_world: int, world_size: int, peak_flops: float, tokens_per_sample: int | None
    ):
        self.device, self.dp_world, self.world_size = device, dp_world, world_size
        self.peak_flops, self.tokens_per_sample = peak_flops, tokens_per_sample
        self.reset()

    def reset(self) -> None:
        """Start a new window now."""
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, stats: Mapping[str, torch.Tensor | float]) -> None:
        """Count one step's statistics (those of ``Trainer.train_step``)."""
        for name, value in stats.items():
            self.sums[name] = self.sums[name] + value
        self.steps += 1

    def summary(self, skipped_steps: int) -> dict[str, float]:
        """The window's logged numbers: averaged over ranks, one host sync per window.

        Samples and FLOPs are counted per data-parallel rank on the whole (unsplit) batch, so the global numbers
        are the rank mean times the data-parallel world; MFU divides by every device, TP/CP peers included.
        Tokens/s is logged only for token data, MFU only when the step's FLOPs are known (an analytic
        ``train_flops``, else the FlopCounterMode twin): a 0 would read as a measurement. The time spent counting
        FLOPs (the first step of each new batch shape) is not training time and is left out of the rates.
        """
        elapsed = time.perf_counter() - self.started
        names = sorted(self.sums)
        stacked = torch.stack([torch.as_tensor(self.sums[name], device=self.device).float() for name in names])
        totals = dict(zip(names, all_reduce_mean(stacked).tolist(), strict=True))
        samples = totals.pop("samples") * self.dp_world
        flops = totals.pop("flops") * self.dp_world
        data_wait = totals.pop("data_wait_s")
        elapsed -= totals.pop("flop_counting_s")
        lr = totals.pop("lr") / self.steps
        summary = {name: value / self.steps for name, value in totals.items()}
        summary.update(
            lr=lr,
            samples_per_s=samples / elapsed,
            data_wait_fraction=data_wait / elapsed,
            peak_memory_gb=peak_memory_gb(self.device),
            skipped_steps=float(skipped_steps),
        )
        if self.tokens_per_sample is not None:
            summary["tokens_per_s"] = samples * self.tokens_per_sample / elapsed
        if flops:
            summary["mfu"] = mfu(flops, elapsed, self.peak_flops, num_devices=self.world_size)
        return summary
