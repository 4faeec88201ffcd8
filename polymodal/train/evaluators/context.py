"""What an evaluator runs with: the frozen model, its device and the data-parallel group, plus the helpers every
evaluator shares (a sharded map over items whose results every rank receives, a per-round cache).

Sharding. Item ``i`` of ``count`` goes to data-parallel rank ``i // ceil(count / world)``; the last rank's share is
padded by repeating the last item, so every rank runs the model the same number of times (an FSDP forward is a
collective: a rank with one batch fewer would leave the others waiting). After an all-gather over the data-parallel
group, the padding is cut off: every rank holds the results of items ``0 .. count-1`` in order, each exactly once.
TP/CP peers share a data-parallel rank and so compute the same items.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from polymodal.models.meta import DataDict, call_block, checking_keys

# The metric naming how many held-out items an evaluator's scores are fractions of (their standard errors need it).
SAMPLES = "samples"


class Evaluator(Protocol):
    """An evaluator: ``evaluate(context)`` returns named numbers; every rank calls it with its own context."""

    def evaluate(self, context: EvalContext) -> dict[str, float]: ...


class EvaluatorFailed(RuntimeError):
    """An evaluator raised; the message names it (evaluation never skips a failing evaluator silently)."""


@dataclass
class EvalContext:
    """The model to evaluate (eval mode, frozen) and where this rank stands. ``autocast`` makes the model's
    precision context; ``cache`` lives for one evaluation round (features shared by evaluators and sweeps)."""

    model: nn.Module
    device: torch.device
    dp_rank: int = 0
    dp_world: int = 1
    dp_group: dist.ProcessGroup | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    debug: bool = False
    cache: dict[Hashable, Any] = field(default_factory=dict)

    def forward(self, batch: DataDict, part: str | None = None) -> DataDict:
        """The model's output data_dict on ``batch``; ``part`` runs one named model of a
        :class:`~polymodal.models.meta.ModelSeries` alone (``model(batch, only=part)``)."""
        kwargs = {"only": part} if part is not None else {}
        with torch.no_grad(), self.autocast(), checking_keys(self.debug):
            return call_block(self.model, batch, name="model", **kwargs)

    def shard(self, count: int) -> list[int]:
        """This rank's item indices, padded to ``ceil(count / world)`` (see the module docstring)."""
        if count < 1:
            raise ValueError("nothing to evaluate: the evaluation data is empty")
        per_rank = math.ceil(count / self.dp_world)
        return [min(self.dp_rank * per_rank + offset, count - 1) for offset in range(per_rank)]

    def map_items(
        self, count: int, batch_size: int, compute: Callable[[list[int]], Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``compute(indices)`` on this rank's share in batches of ``batch_size``; returns each named output for
        all ``count`` items in order, on every rank."""
        indices = self.shard(count)
        outputs: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(indices), batch_size):
            for name, value in compute(indices[start : start + batch_size]).items():
                outputs.setdefault(name, []).append(value.detach())
        return {name: self.gather(torch.cat(values), count) for name, values in outputs.items()}

    def gather(self, local: torch.Tensor, count: int) -> torch.Tensor:
        """Every data-parallel rank's equally-shaped ``local`` concatenated in rank order, cut to ``count``."""
        if self.dp_world > 1:
            parts = [torch.empty_like(local) for _ in range(self.dp_world)]
            dist.all_gather(parts, local.contiguous(), group=self.dp_group)
            local = torch.cat(parts)
        return local[:count]

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per evaluation round for ``key``."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


def run_evaluators(evaluators: Mapping[str, Evaluator], context: EvalContext) -> dict[str, float]:
    """Every evaluator's results as ``<name>/<metric>``; a failure raises :class:`EvaluatorFailed` naming it."""
    context.cache.clear()
    results: dict[str, float] = {}
    was_training = context.model.training
    context.model.eval()
    try:
        for name, evaluator in evaluators.items():
            try:
                values = evaluator.evaluate(context)
            except Exception as error:
                raise EvaluatorFailed(f"evaluator '{name}' failed: {type(error).__name__}: {error}") from error
            results.update({f"{name}/{metric}": float(value) for metric, value in values.items()})
    finally:
        context.cache.clear()
        context.model.train(was_training)
    return results
