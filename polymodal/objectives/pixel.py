"""Next-patch pixel regression (AIM): the prediction at patch i regresses the normalised pixels of patch i + 1.

Targets are the image's patches (:func:`~polymodal.models.layers.patch_embed.patchify`), each normalised over its
own ``ph * pw * C`` values: ``(t - mean) / sqrt(var + eps)`` with the unbiased variance and ``eps = 1e-6``, as MAE's
and AIM's ``norm_pix_loss``. The squared error is averaged over a patch's values, then over the *counted* targets:
target ``j`` (1 <= j < N) of a sample with prefix length K counts iff ``j >= K``. Targets inside the prefix are left
out because the prefix attends bidirectionally: the output at a prefix patch has seen its successor.

When no target is counted (every prefix length N, i.e. a fully bidirectional mask) the loss is 0 with a zero
gradient rather than upstream's 0/0 = NaN; the ``counted_fraction`` metric (counted targets over all N - 1 per
sample) then reads 0 and says so. Evaluate with a prefix shorter than N (see
:class:`~polymodal.data.multimodal.prefix.FixedPrefixLengths`) to get a loss that means something.
"""

from __future__ import annotations

import torch
from torch import Tensor

from polymodal.models.layers.patch_embed import PatchSize, grid_size, patchify
from polymodal.models.meta import DataDict, Objective


def normalised_patches(images: Tensor, patch_size: PatchSize, eps: float = 1e-6) -> Tensor:
    """``[B, N, ph * pw * C]`` float32 patches of ``images``, each standardised over its own values."""
    patches = patchify(images.float(), patch_size)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def counted_targets(prefix_lengths: Tensor, num_patches: int) -> Tensor:
    """``[B, N - 1]`` bool: target ``j = 1 .. N - 1`` counts iff it lies outside the prefix (``j >= K``)."""
    targets = torch.arange(1, num_patches, device=prefix_lengths.device)
    return targets[None, :] >= prefix_lengths[:, None]


class NextPatchPixelLoss(Objective):
    """Mean squared error of ``pred[:, i]`` against normalised patch ``i + 1``, over targets outside the prefix.

    Reads predictions ``[B, N, ph * pw * C]`` (per patch, extra tokens already dropped, e.g. by
    :class:`~polymodal.models.mlp_head.MLPHead`), the images ``[B, C, H, W]`` and the prefix lengths ``[B]``.
    ``normalize=False`` regresses the raw pixels.
    """

    def __init__(
        self,
        patch_size: PatchSize,
        pred_key: str = "pixel_pred",
        image_key: str = "image",
        prefix_key: str = "prefix_lengths",
        normalize: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__(read_keys=[pred_key, image_key, prefix_key])
        self.patch_size = patch_size
        self.normalize = normalize
        self.eps = eps

    def _counted(self, data: DataDict) -> Tensor:
        _, image_key, prefix_key = self.read_keys
        images, prefix_lengths = data[image_key], data[prefix_key]
        if tuple(prefix_lengths.shape) != (images.shape[0],):
            raise ValueError(f"prefix_lengths must be [B={images.shape[0]}], got shape {tuple(prefix_lengths.shape)}")
        grid_h, grid_w = grid_size(tuple(images.shape[-2:]), self.patch_size)
        if grid_h * grid_w < 2:
            raise ValueError(f"next-patch prediction needs at least 2 patches, the images have {grid_h * grid_w}")
        return counted_targets(prefix_lengths, grid_h * grid_w)

    def loss_weight(self, batch: DataDict) -> Tensor:
        """The counted targets of ``batch``: what the loss averages over (the trainer weighs micro-batches and
        ranks by it, so a step's loss is the mean over every counted target of the global batch)."""
        return self._counted(batch).sum()

    def forward(self, data: DataDict) -> tuple[Tensor, dict[str, Tensor]]:
        pred_key, image_key, _ = self.read_keys
        images = data[image_key]
        if self.normalize:
            targets = normalised_patches(images, self.patch_size, self.eps)
        else:
            targets = patchify(images.float(), self.patch_size)
        pred = data[pred_key]
        if pred.shape != targets.shape:
            raise ValueError(
                f"predictions must be one per patch, [B, N, ph*pw*C] = {tuple(targets.shape)}, got {tuple(pred.shape)}"
            )
        counted = self._counted(data).to(pred.device)
        errors = (pred[:, :-1].float() - targets[:, 1:]).square().mean(dim=-1)
        count = counted.sum()
        loss = (errors * counted).sum() / count.clamp(min=1)
        return loss, {"counted_fraction": (count / counted.numel()).detach().float()}
