"""The image metrics of the 4M evaluation: depth errors and semseg IoU (the caption words are scored by
:mod:`polymodal.data.synth.scoring`; :mod:`polymodal.families.fourm.evaluate.tasks` says how each task uses them)."""

from __future__ import annotations

from torch import Tensor

from polymodal.tokenizers.image.metrics import mean_iou
from polymodal.tokenizers.image.tokenizer import DEFAULT_MIN_DEPTH


def abs_rel_error(predicted: Tensor, target: Tensor) -> float:
    """``mean(|predicted − target| / target)`` over every pixel (depths in metres, ``target > 0``)."""
    if predicted.shape != target.shape:
        raise ValueError(f"depth shapes differ: predicted {tuple(predicted.shape)}, target {tuple(target.shape)}")
    if bool((target <= 0).any()):
        raise ValueError("ground-truth depth must be > 0 everywhere")
    return ((predicted.float() - target.float()).abs() / target.float()).mean().item()


def log_rmse(predicted: Tensor, target: Tensor, min_depth: float = DEFAULT_MIN_DEPTH) -> float:
    """``sqrt(mean((log predicted − log target)²))`` over every pixel, depths clamped to ``min_depth`` first."""
    if predicted.shape != target.shape:
        raise ValueError(f"depth shapes differ: predicted {tuple(predicted.shape)}, target {tuple(target.shape)}")
    difference = predicted.float().clamp_min(min_depth).log() - target.float().clamp_min(min_depth).log()
    return difference.square().mean().sqrt().item()


def semseg_miou(predicted: Tensor, target: Tensor) -> float:
    """:func:`mean_iou` over all pixels of the batch, classes counted up to the largest id seen."""
    num_classes = int(max(predicted.max(), target.max())) + 1
    return mean_iou(predicted.long(), target.long(), num_classes).item()
