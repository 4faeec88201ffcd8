"""Reconstruction quality of an image tokenizer: PSNR, mean IoU, chroma, and how much of the codebook is used."""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(prediction: Tensor, target: Tensor, data_range: float | None = None) -> Tensor:
    """Mean over the batch of each image's PSNR in dB; ``data_range=None`` uses each target's max - min."""
    prediction, target = prediction.float().flatten(1), target.float().flatten(1)
    mse = (prediction - target).square().mean(dim=1)
    if data_range is None:
        peak = (target.amax(dim=1) - target.amin(dim=1)).clamp_min(1e-8)
    else:
        peak = torch.full_like(mse, float(data_range))
    return (10.0 * torch.log10(peak.square() / mse.clamp_min(1e-12))).mean()


def mean_iou(predicted_ids: Tensor, target_ids: Tensor, num_classes: int) -> Tensor:
    """Mean intersection-over-union over the classes that occur in the prediction or the target."""
    predicted, target = predicted_ids.flatten(), target_ids.flatten()
    intersection = torch.bincount(target[predicted == target], minlength=num_classes).float()
    union = (
        torch.bincount(predicted, minlength=num_classes) + torch.bincount(target, minlength=num_classes)
    ).float() - intersection
    occurring = union > 0
    return (intersection[occurring] / union[occurring]).mean()


def chroma(images: Tensor) -> Tensor:
    """The colour of ``[B, 3, H, W]`` images without their brightness: each channel minus the pixel's mean."""
    return images - images.mean(dim=1, keepdim=True)


def codebook_usage(usage: Tensor) -> Tensor:
    """The fraction of the codebook used at least once (``usage`` holds the per-code counts)."""
    return (usage > 0).float().mean()
