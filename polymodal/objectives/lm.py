"""Next-token cross-entropy with an optional z-loss (PaLM): penalises log Z so logits stay in a stable range."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.models.meta import DataDict, Objective


class NextTokenLoss(Objective):
    """Mean cross-entropy of ``logits`` [B, T, V] against ``target_ids`` [B, T]; targets equal to
    ``ignore_index`` are left out. Computed in float32 whatever the autocast dtype.

    Metrics: ``cross_entropy``, ``accuracy``, ``log_z_squared`` (mean (log Z)², what the z-loss penalises) and,
    with a z-loss weight, ``z_loss``: the weighted term that is in the loss, so ``loss = cross_entropy + z_loss``.
    """

    def __init__(
        self,
        logits_key: str = "logits",
        target_key: str = "target_ids",
        z_loss_weight: float = 0.0,
        ignore_index: int = -100,
    ):
        super().__init__(read_keys=[logits_key, target_key])
        self.z_loss_weight = z_loss_weight
        self.ignore_index = ignore_index

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_key, target_key = self.read_keys
        logits = data[logits_key].float().flatten(0, -2)
        targets = data[target_key].flatten()
        valid = targets != self.ignore_index
        count = valid.sum().clamp(min=1)
        cross_entropy = F.cross_entropy(logits, targets, ignore_index=self.ignore_index, reduction="sum") / count
        log_z = torch.logsumexp(logits, dim=-1)
        z_loss = (log_z.square() * valid).sum() / count
        accuracy = ((logits.argmax(-1) == targets) & valid).sum() / count
        metrics = {
            "cross_entropy": cross_entropy.detach(),
            "accuracy": accuracy.detach(),
            "log_z_squared": z_loss.detach(),
        }
        if not self.z_loss_weight:
            return cross_entropy, metrics
        weighted = self.z_loss_weight * z_loss
        metrics["z_loss"] = weighted.detach()
        return cross_entropy + weighted, metrics
