"""Classification cross-entropy (optionally label-smoothed) with top-1 accuracy, as an Objective block."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.models.meta import DataDict, Objective


class ClassificationLoss(Objective):
    """Cross-entropy of ``logits`` [B, C] against integer ``label`` [B]; reports ``accuracy`` too."""

    def __init__(self, logits_key: str = "logits", label_key: str = "label", label_smoothing: float = 0.0):
        super().__init__(read_keys=[logits_key, label_key])
        self.label_smoothing = label_smoothing

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_key, label_key = self.read_keys
        logits, labels = data[logits_key].float(), data[label_key]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"accuracy": accuracy.detach()}
