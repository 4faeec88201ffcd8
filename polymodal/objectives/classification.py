"""Classification cross-entropy (optionally label-smoothed) with top-1 accuracy, as an Objective block."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.models.meta import DataDict, Objective


class ClassificationLoss(Objective):
    """Cross-entropy of ``logits`` [B, C] against ``label``: integer classes [B], or soft targets [B, C] (float
    probabilities, e.g. from the Mixup/CutMix batch transform); reports top-1 ``accuracy`` too, against the argmax of
    soft targets (the class with the larger share of a mixed image).

    ``label_smoothing`` smooths integer labels only: soft targets were smoothed where they were made, so with soft
    targets it must be 0 (an error otherwise, rather than smoothing twice).
    """

    def __init__(self, logits_key: str = "logits", label_key: str = "label", label_smoothing: float = 0.0):
        super().__init__(read_keys=[logits_key, label_key])
        self.label_smoothing = label_smoothing

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_key, label_key = self.read_keys
        logits, labels = data[logits_key].float(), data[label_key]
        if labels.is_floating_point():
            if labels.shape != logits.shape:
                raise ValueError(
                    f"soft targets {tuple(labels.shape)} must have the logits' shape {tuple(logits.shape)}"
                )
            if self.label_smoothing:
                raise ValueError(
                    f"{label_key!r} holds soft targets, already smoothed by the batch transform: set the loss's "
                    f"label_smoothing to 0 (it is {self.label_smoothing}) and smooth in data.mixup"
                )
            loss = F.cross_entropy(logits, labels.float())
            labels = labels.argmax(-1)
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"accuracy": accuracy.detach()}
