"""Learning-rate schedules as pure functions of the optimizer step.

A schedule returns a *multiplier* of each parameter group's base learning rate. It depends only on
``(step, total_steps)`` and its settings, so resuming a run needs no scheduler state beyond the step.

Step convention: ``step`` is the 0-based index of the optimizer step about to be taken. During warmup
the multiplier is ``warmup_init + (1 - warmup_init) * (step + 1) / warmup_steps``, so step 0 already
moves the weights even with ``warmup_init = 0`` and step ``warmup_steps - 1`` reaches 1. After warmup,
progress ``(step - warmup_steps) / (total_steps - warmup_steps)`` runs from 0 to 1 and the decaying
kinds reach ``min_ratio`` at ``step == total_steps``; steps past ``total_steps`` keep that final value.

Kinds:

* ``cosine``   — half cosine from 1 to ``min_ratio``.
* ``linear``   — straight line from 1 to ``min_ratio``.
* ``constant`` — 1 after warmup.
* ``wsd``      — warmup–stable–decay: 1 until the last ``decay_fraction`` of ``total_steps``, then a
  ``linear`` or ``sqrt`` (``1 - sqrt(progress)``) decay to ``min_ratio`` at ``total_steps``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

log = logging.getLogger("polymodal")

ScheduleKind = Literal["cosine", "linear", "constant", "wsd"]
WsdDecay = Literal["linear", "sqrt"]

SCHEDULE_KINDS: tuple[str, ...] = ("cosine", "linear", "constant", "wsd")
WSD_DECAYS: tuple[str, ...] = ("linear", "sqrt")


def _check_settings(
    kind: str,
    warmup_steps: int,
    min_ratio: float,
    decay_fraction: float,
    wsd_decay: str,
    warmup_init: float,
) -> None:
    """Raise ValueError for settings that make no sense regardless of the run length."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
    if wsd_decay not in WSD_DECAYS:
        raise ValueError(f"unknown wsd_decay {wsd_decay!r}; expected one of {WSD_DECAYS}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if not 0.0 <= warmup_init <= 1.0:
        raise ValueError(f"warmup_init must be in [0, 1], got {warmup_init}")
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")


def _check_progress(step: int, total_steps: int, warmup_steps: int, kind: str, decay_fraction: float) -> None:
    """Raise ValueError for a step or run length that does not fit the schedule settings."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) exceeds total_steps ({total_steps})")
    if kind == "wsd" and warmup_steps > total_steps * (1.0 - decay_fraction):
        raise ValueError(
            f"warmup_steps ({warmup_steps}) overlaps the wsd decay phase, which starts at step "
            f"{total_steps * (1.0 - decay_fraction):g} (decay_fraction={decay_fraction} of {total_steps})"
        )


def _decay_shape(progress: float, kind: str, wsd_decay: str) -> float:
    """Fraction of the way from 1 down to ``min_ratio`` still remaining, for progress in [0, 1]."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "wsd" and wsd_decay == "sqrt":
        return 1.0 - math.sqrt(progress)
    return 1.0 - progress


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_steps: int,
    kind: ScheduleKind,
    min_ratio: float = 0.0,
    decay_fraction: float = 0.2,
    warmup_init: float = 0.0,
    wsd_decay: WsdDecay = "linear",
) -> float:
    """Multiplier of the base learning rate for 0-based optimizer step ``step`` (see module docstring)."""
    _check_settings(kind, warmup_steps, min_ratio, decay_fraction, wsd_decay, warmup_init)
    _check_progress(step, total_steps, warmup_steps, kind, decay_fraction)

    if step < warmup_steps:
        return warmup_init + (1.0 - warmup_init) * (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if step >= total_steps:
        return min_ratio

    if kind == "wsd":
        decay_steps = decay_fraction * total_steps
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / decay_steps
    else:
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * _decay_shape(progress, kind, wsd_decay)


@dataclass(frozen=True)
class Schedule:
    """Schedule settings from config; call it with ``(step, total_steps)`` to get the multiplier.

    Config: ``_target_: polymodal.train.schedules.Schedule`` with ``kind``, ``warmup_steps``,
    ``min_ratio``, ``decay_fraction``, ``wsd_decay`` and ``warmup_init``.
    """

    kind: ScheduleKind = "cosine"
    warmup_steps: int = 0
    min_ratio: float = 0.0
    decay_fraction: float = 0.2
    wsd_decay: WsdDecay = "linear"
    warmup_init: float = 0.0

    def __post_init__(self) -> None:
        _check_settings(
            self.kind,
            self.warmup_steps,
            self.min_ratio,
            self.decay_fraction,
            self.wsd_decay,
            self.warmup_init,
        )

    def for_run(self, total_steps: int) -> Schedule:
        """This schedule fitted to a run of ``total_steps``, checked before anything is built: a warmup longer than
        the run (a quick try, ``--debug``) is cut to a tenth of the run with a logged note; a run the schedule
        cannot fit otherwise (wsd warmup overlapping its decay) raises ValueError."""
        schedule = self
        if total_steps > 0 and self.warmup_steps > total_steps:
            schedule = dataclasses.replace(self, warmup_steps=total_steps // 10)
            log.warning(
                "warmup_steps (%d) exceeds total_steps (%d): warming up for %d steps instead (a tenth of the run)",
                self.warmup_steps,
                total_steps,
                schedule.warmup_steps,
            )
        _check_progress(0, total_steps, schedule.warmup_steps, schedule.kind, schedule.decay_fraction)
        return schedule

    def __call__(self, step: int, total_steps: int) -> float:
        return lr_multiplier(
            step,
            total_steps,
            self.warmup_steps,
            self.kind,
            min_ratio=self.min_ratio,
            decay_fraction=self.decay_fraction,
            warmup_init=self.warmup_init,
            wsd_decay=self.wsd_decay,
        )

    def apply(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> float:
        """Set every group's ``lr = base_lr * multiplier * lr_scale``; return the multiplier.

        Groups need a ``base_lr`` entry (``polymodal.train.optim.build_optimizer`` stores it).
        """
        multiplier = self(step, total_steps)
        for index, group in enumerate(optimizer.param_groups):
            if "base_lr" not in group:
                raise ValueError(
                    f"optimizer param group {index} has no 'base_lr'; build the optimizer with "
                    "polymodal.train.optim.build_optimizer or set group['base_lr'] yourself"
                )
            group["lr"] = group["base_lr"] * multiplier * group.get("lr_scale", 1.0)
        return multiplier
