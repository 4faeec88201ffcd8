"""Gradient accumulation: each micro-batch's weight in the optimizer step, and the step's value from theirs."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.distributed.env import all_reduce_mean
from polymodal.models.meta import DataDict


def micro_batch_shares(objective: nn.Module, parts: list[DataDict]) -> list[torch.Tensor | float]:
    """Each micro-batch's weight in the step relative to the mean over every micro-batch of every rank.

    An objective that averages over a data-dependent number of units (``loss_weight(batch)``: e.g. the labelled
    tokens of :class:`~polymodal.objectives.lm.NextTokenLoss`) has its loss and values scaled by this share, so that
    the step's gradient and logged means are over all units of all micro-batches and ranks alike — as one process
    with the whole global batch computes them — rather than a mean of micro-batch means. Other objectives weigh
    every micro-batch alike (shares of 1)."""
    weigh = getattr(objective, "loss_weight", None)
    if weigh is None:
        return [1.0] * len(parts)
    weights = torch.stack([weigh(part).float() for part in parts])
    mean = all_reduce_mean(weights.mean())  # TP peers count alike, so a mean over every rank is the data mean
    return list(weights / mean.clamp_min(torch.finfo(torch.float32).tiny))


def micro_batch_mean(values: list[torch.Tensor]) -> torch.Tensor:
    """Mean of micro-batch values (no extra work for the common single micro-batch)."""
    return values[0] if len(values) == 1 else torch.stack(values).float().mean()
