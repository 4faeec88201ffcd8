"""ClassificationLoss with integer labels and with soft targets (Mixup/CutMix): equal to a plain computation, top-1
accuracy against the argmax of the soft target, and label smoothing applied exactly once."""

import math

import pytest
import torch

from polymodal.data.multimodal.mixup import MixupCutmix
from polymodal.objectives.classification import ClassificationLoss


def plain_cross_entropy(logits, targets):
    """Mean over rows of -sum_c target_c * log softmax(logits)_c, one row at a time."""
    total = 0.0
    for row, target in zip(logits.tolist(), targets.tolist(), strict=True):
        log_norm = math.log(sum(math.exp(v) for v in row))
        total -= sum(t * (v - log_norm) for v, t in zip(row, target, strict=True))
    return total / len(logits)


def test_soft_target_loss_and_accuracy_equal_a_plain_computation():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)) * 3, dim=1)
    loss, metrics = ClassificationLoss()({"logits": logits, "label": targets})
    assert loss.item() == pytest.approx(plain_cross_entropy(logits, targets), rel=1e-5)
    hits = [int(torch.argmax(lg)) == int(torch.argmax(t)) for lg, t in zip(logits, targets, strict=True)]
    assert metrics["accuracy"].item() == pytest.approx(sum(hits) / len(hits))


def test_integer_labels_with_smoothing_equal_a_plain_computation():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2, 1, 2])
    smoothed = torch.full((4, 3), 0.1 / 3)
    smoothed[torch.arange(4), labels] += 0.9
    loss, metrics = ClassificationLoss(label_smoothing=0.1)({"logits": logits, "label": labels})
    assert loss.item() == pytest.approx(plain_cross_entropy(logits, smoothed), rel=1e-5)
    assert metrics["accuracy"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_smoothing_in_the_batch_transform_is_applied_once():
    """Unmixed soft targets smoothed by the batch transform give the loss of integer labels smoothed by the loss."""
    labels = torch.tensor([1, 0, 3, 2])
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    batch = MixupCutmix(num_classes=4, prob=0.0, label_smoothing=0.2)(
        {"rgb": torch.zeros(4, 3, 2, 2), "label": labels}, torch.Generator().manual_seed(0)
    )
    soft, _ = ClassificationLoss()({"logits": logits, "label": batch["label"]})
    hard, _ = ClassificationLoss(label_smoothing=0.2)({"logits": logits, "label": labels})
    torch.testing.assert_close(soft, hard)
    with pytest.raises(ValueError, match="already smoothed by the batch transform: set the loss's label_smoothing"):
        ClassificationLoss(label_smoothing=0.1)({"logits": logits, "label": batch["label"]})
    with pytest.raises(ValueError, match=r"soft targets \(4, 4\) must have the logits' shape \(4, 5\)"):
        ClassificationLoss()({"logits": torch.zeros(4, 5), "label": batch["label"]})
