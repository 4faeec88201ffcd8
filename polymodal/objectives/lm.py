"""Next-token cross-entropy with an optional z-loss (PaLM): penalises log Z so logits stay in a stable range."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.models.meta import DataDict, Objective
from polymodal.models.token_loss import TokenLossSums


class NextTokenLoss(Objective):
    """Mean cross-entropy over the labelled positions (target not ``ignore_index``), plus ``z_loss_weight`` times
    the mean (log Z)² over the same positions.

    The sums come from the model when its head computed them (a
    :class:`~polymodal.models.parts.VocabularyHead` given targets writes them under ``sums_key``; its own
    ``ignore_index`` applies), else from ``logits`` [B, T, V] against ``target_ids`` [B, T], in float32 whatever
    the autocast dtype (also vocabulary-sharded logits under loss parallelism).

    Metrics: ``cross_entropy``, ``accuracy``, ``log_z_squared`` (mean (log Z)², what the z-loss penalises) and,
    with a z-loss weight, ``z_loss``: the weighted term that is in the loss, so ``loss = cross_entropy + z_loss``.
    """

    def __init__(
        self,
        logits_key: str = "logits",
        target_key: str = "target_ids",
        z_loss_weight: float = 0.0,
        ignore_index: int = -100,
        sums_key: str = "token_loss",
    ):
        super().__init__(read_keys=[sums_key, logits_key, target_key])
        self.z_loss_weight = z_loss_weight
        self.ignore_index = ignore_index

    def loss_weight(self, batch: DataDict) -> torch.Tensor:
        """The labelled positions of ``batch``: what the loss averages over. The trainer weighs micro-batches and
        ranks by it, so the step's loss is a mean over all their labelled tokens."""
        return (batch[self.read_keys[2]] != self.ignore_index).sum()

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sums_key, logits_key, target_key = self.read_keys
        if sums_key in data:
            sums = data[sums_key]
        else:
            sums = logits_loss_sums(data[logits_key], data[target_key], self.ignore_index)
        count = sums.count.clamp(min=1)
        cross_entropy = sums.cross_entropy / count
        log_z_squared = sums.log_z_squared / count
        metrics = {
            "cross_entropy": cross_entropy.detach(),
            "accuracy": (sums.correct / count).detach(),
            "log_z_squared": log_z_squared.detach(),
        }
        if not self.z_loss_weight:
            return cross_entropy, metrics
        weighted = self.z_loss_weight * log_z_squared
        metrics["z_loss"] = weighted.detach()
        return cross_entropy + weighted, metrics


def logits_loss_sums(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> TokenLossSums:
    """The sums of :class:`TokenLossSums` from logits made for every position. ``F.cross_entropy`` and a
    separate log-sum-exp rather than one shared log-sum-exp, because both also run on vocabulary-sharded logits."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).flatten(0, -2)
    targets = targets.flatten()
    labelled = targets != ignore_index
    cross_entropy = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    log_z = torch.logsumexp(logits, dim=-1)
    return TokenLossSums(
        cross_entropy=cross_entropy,
        log_z_squared=(log_z.square() * labelled).sum(),
        correct=((logits.argmax(-1) == targets) & labelled).sum(),
        count=labelled.sum(),
    )
