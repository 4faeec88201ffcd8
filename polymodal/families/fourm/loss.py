"""4M's masked multimodal cross-entropy: one cross-entropy per target modality, then combined.

``mode="modality"`` (4M's default): the mean over the modalities that have targets in the batch of each
modality's token-mean cross-entropy, so a modality's weight does not depend on how many tokens it has. Upstream
also counted modalities without targets in the denominator (a batch missing one modality's targets got a smaller
loss); ``count_empty_modalities=True`` reproduces that. ``mode="token"``: the mean over all target tokens of all
modalities (upstream weighted each modality by ``n_tokens * vocab_size``; we weight by ``n_tokens``). An optional
z-loss (PaLM; ``z_loss_weight``, 0 by default as 4M) adds the mean ``(log Z)²``, combined over modalities the same
way.

``modality_weights`` (not in 4M; every modality 1 by default) scales a modality's part of either mean: the modality
mode becomes ``Σ w_m · mean_m / Σ w_m`` over the modalities with targets, the token mode ``Σ w_m · sum_m /
Σ w_m · n_m``. A small model trained on many targets at once learns each of them in proportion to its share of the
gradient; a weight steers that share without changing which tokens are masked.

The per-modality sums come from the model (``FourM`` with ``loss_chunk_size`` computes them from its decoder output
and head weights, a chunk of rows at a time, without full logits), or from ``{modality: [n, V] logits}`` in float32.
A modality without targets still contributes ``0 * cross_entropy``, so its head is part of the graph (a zero
gradient) on every rank and data-parallel gradient reductions see the same parameters everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from polymodal.models.meta import DataDict, Objective
from polymodal.models.token_loss import TokenLossSums
from polymodal.objectives.lm import logits_loss_sums

MODES = ("modality", "token")


class FourMLoss(Objective):
    """Reads ``{modality: TokenLossSums}`` (or else ``{modality: [n, V] logits}``) and ``{modality: [n] target
    ids}``; returns the loss and, per modality, ``<modality>/loss`` (token-mean cross-entropy, 0 without targets),
    ``<modality>/accuracy`` and ``<modality>/tokens``; with a z-loss weight also ``z_loss``, the weighted term that
    is in the loss."""

    def __init__(
        self,
        mode: str = "modality",
        count_empty_modalities: bool = False,
        z_loss_weight: float = 0.0,
        logits_key: str = "logits",
        targets_key: str = "targets",
        sums_key: str = "token_loss",
        modality_weights: Mapping[str, float] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        weights = dict(modality_weights or {})
        bad = {name: weight for name, weight in weights.items() if not _positive_number(weight)}
        if bad:
            raise ValueError(f"modality_weights must be finite and > 0, got {bad}")
        super().__init__(read_keys=[sums_key, logits_key, targets_key])
        self.mode = mode
        self.count_empty_modalities = count_empty_modalities
        self.z_loss_weight = z_loss_weight
        self.modality_weights = weights

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sums_key, logits_key, targets_key = self.read_keys
        targets = data[targets_key]
        outputs = data[sums_key] if sums_key in data else data[logits_key]
        if set(outputs) != set(targets):
            raise ValueError(f"outputs and targets name different modalities: {sorted(outputs)} vs {sorted(targets)}")
        if not outputs:
            raise ValueError("no target modality in the batch: nothing to compute a loss on")
        sums = outputs if sums_key in data else _sums_from_logits(outputs, targets)
        unknown = set(self.modality_weights) - set(sums)
        if unknown:
            raise ValueError(f"modality_weights name modalities that are not targets: {sorted(unknown)}; "
                             f"the targets are {sorted(sums)}")  # fmt: skip
        weights = [self.modality_weights.get(name, 1.0) for name in sums]
        counts = [targets[name].numel() for name in sums]  # every target row is labelled; no device sync
        anchor = sum(modality.cross_entropy for modality in sums.values()) * 0.0  # keeps every head in the graph
        metrics = {}
        for (name, modality), count in zip(sums.items(), counts, strict=True):
            metrics[f"{name}/loss"] = (modality.cross_entropy / max(count, 1)).detach()
            metrics[f"{name}/accuracy"] = (modality.correct / max(count, 1)).detach()
            metrics[f"{name}/tokens"] = torch.tensor(count, device=anchor.device)
        loss = self._combine([modality.cross_entropy for modality in sums.values()], counts, weights)
        if self.z_loss_weight:
            log_z_squared = [modality.log_z_squared for modality in sums.values()]
            z_loss = self.z_loss_weight * self._combine(log_z_squared, counts, weights)
            metrics["z_loss"] = z_loss.detach()
            loss = loss + z_loss
        return loss + anchor, metrics

    def _combine(self, totals: Sequence[torch.Tensor], counts: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
        """The per-modality sums ``totals`` as one weighted mean, by ``mode`` (module docstring)."""
        parts = list(zip(totals, counts, weights, strict=True))
        if self.mode == "token":
            return sum(weight * total for total, _, weight in parts) / max(
                sum(weight * count for _, count, weight in parts), 1e-12
            )
        present = [(total / count, weight) for total, count, weight in parts if count]
        numerator = sum((weight * mean for mean, weight in present), torch.zeros_like(totals[0]))
        counted = parts if self.count_empty_modalities else present
        denominator = sum(weight for *_, weight in counted)
        return numerator / denominator if denominator else numerator


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _sums_from_logits(
    logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
) -> dict[str, TokenLossSums]:
    """``{modality: TokenLossSums}`` from each modality's ``[n, V]`` logits (in float32)."""
    for name, modality_logits in logits.items():
        if modality_logits.shape[:-1] != targets[name].shape:
            raise ValueError(f"modality {name!r}: logits {tuple(modality_logits.shape)} do not match "
                             f"targets {tuple(targets[name].shape)}")  # fmt: skip
    return {name: logits_loss_sums(modality_logits, targets[name]) for name, modality_logits in logits.items()}
