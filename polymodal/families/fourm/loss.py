"""4M's masked multimodal cross-entropy: one cross-entropy per target modality, then combined.

``mode="modality"`` (4M's default): the mean over the modalities that have targets in the batch of each
modality's token-mean cross-entropy, so a modality's weight does not depend on how many tokens it has. Upstream
also counted modalities without targets in the denominator (a batch missing one modality's targets got a smaller
loss); ``count_empty_modalities=True`` reproduces that. ``mode="token"``: the mean over all target tokens of all
modalities (upstream weighted each modality by ``n_tokens * vocab_size``; we weight by ``n_tokens``).

A modality without targets still contributes ``0 * sum(logits)``, so its head is part of the graph (a zero
gradient) on every rank and data-parallel gradient reductions see the same parameters everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.models.meta import DataDict, Objective

MODES = ("modality", "token")


class FourMLoss(Objective):
    """Reads ``{modality: [n, V] logits}`` and ``{modality: [n] target ids}``; returns the loss and, per modality,
    ``<modality>/loss`` (token-mean cross-entropy, 0 without targets) and ``<modality>/tokens``."""

    def __init__(
        self,
        mode: str = "modality",
        count_empty_modalities: bool = False,
        logits_key: str = "logits",
        targets_key: str = "targets",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(read_keys=[logits_key, targets_key])
        self.mode = mode
        self.count_empty_modalities = count_empty_modalities

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_key, targets_key = self.read_keys
        logits, targets = data[logits_key], data[targets_key]
        if set(logits) != set(targets):
            raise ValueError(f"logits and targets name different modalities: {sorted(logits)} vs {sorted(targets)}")
        if not logits:
            raise ValueError("no target modality in the batch: nothing to compute a loss on")
        sums, counts, metrics = [], [], {}
        anchor = sum(value.sum() for value in logits.values()) * 0.0  # keeps every head in the graph
        for name, modality_logits in logits.items():
            modality_targets = targets[name]
            if modality_logits.shape[:-1] != modality_targets.shape:
                raise ValueError(f"modality {name!r}: logits {tuple(modality_logits.shape)} do not match "
                                 f"targets {tuple(modality_targets.shape)}")  # fmt: skip
            count = modality_targets.numel()
            total = F.cross_entropy(modality_logits.float(), modality_targets, reduction="sum") if count else anchor
            sums.append(total)
            counts.append(count)
            metrics[f"{name}/loss"] = (total / max(count, 1)).detach()
            metrics[f"{name}/tokens"] = torch.tensor(count, device=anchor.device)
        present = [index for index, count in enumerate(counts) if count]
        if self.mode == "token":
            loss = sum(sums) / max(sum(counts), 1)
        else:
            denominator = len(counts) if self.count_empty_modalities else max(len(present), 1)
            loss = sum(sums[index] / counts[index] for index in present) / denominator
        return loss + anchor, metrics
