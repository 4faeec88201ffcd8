"""Mixup / CutMix with label smoothing as a batch transform: integer labels become soft targets [B, num_classes].

Semantics are timm's ``Mixup`` in its ``batch`` mode, with DeiT's defaults (mixup alpha 0.8, cutmix alpha 1.0,
switch probability 0.5, probability 1, label smoothing 0.1). Per batch:

1. with probability ``1 - prob`` (or when both alphas are 0) nothing is mixed: ``lam = 1``;
2. otherwise CutMix is chosen with probability ``switch_prob`` when both alphas are > 0 (the only one when one
   alpha is 0), and ``lam ~ Beta(alpha, alpha)`` with that method's alpha;
3. Mixup blends ``lam * x + (1 - lam) * x.flip(0)``; CutMix pastes one box of ``x.flip(0)`` into every image:
   the box has sides ``int(H * sqrt(1 - lam))`` x ``int(W * sqrt(1 - lam))`` around a uniform centre, clipped to the
   image, and ``lam`` becomes the uncovered fraction of the image;
4. targets: ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))`` with ``smooth(y) = one_hot(y) * (1 - s) + s / C``.

The partner of row ``i`` is row ``B - 1 - i`` of the same (per-rank) batch. Validation batches are not mixed.

Randomness comes only from the ``generator`` the loader passes (seeded by the batch's global position, see
:mod:`polymodal.data.multimodal.loader`), so the mixed batches are the same for any worker count and after a resume.
torchvision's ``MixUp``/``CutMix`` draw from the global RNG (no generator argument), have no label smoothing and no
switch between the two, hence this module. Beta draws need a NumPy generator: one is seeded from ``generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from polymodal.data.multimodal.collate import Batch

Box = tuple[int, int, int, int]  # top, bottom, left, right: rows [top, bottom) and columns [left, right)


@dataclass(frozen=True)
class MixDraw:
    """One batch's draw: ``lam`` weighs a row's own label (1: unmixed); ``box`` is the region pasted from the partner
    (CutMix), None for a blend (Mixup) or no mixing."""

    lam: float
    box: Box | None = None


def soft_targets(labels: torch.Tensor, num_classes: int, label_smoothing: float, lam: float) -> torch.Tensor:
    """float32 [B, num_classes]: the smoothed one-hot labels mixed with those of the flipped batch by ``lam``."""
    off = label_smoothing / num_classes
    one_hot = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32)
    one_hot.scatter_(1, labels.long().view(-1, 1), 1.0 - label_smoothing + off)
    return one_hot * lam + one_hot.flip(0) * (1.0 - lam)


@dataclass(frozen=True)
class MixupCutmix:
    """The loader's ``batch_transform`` (module docstring): mixes ``batch[image_key]`` (float [B, C, H, W]) and turns
    the int64 ``batch[label_key]`` [B] into soft targets [B, num_classes] in place of the labels.

    Args:
        num_classes: the number of classes (labels must lie in ``[0, num_classes)``).
        mixup_alpha, cutmix_alpha: Beta concentrations; 0 disables that method.
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix rather than Mixup when both are enabled.
        label_smoothing: smoothing of the targets (the loss must then not smooth again).
        image_key, label_key: the batch keys mixed.
        extra_labels: ``{batch key: number of classes}`` of more integer labels of the same images (a model with
            one head per attribute); each becomes soft targets mixed with the same draw.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    image_key: str = "rgb"
    label_key: str = "label"
    extra_labels: dict[str, int] = field(default_factory=dict)

    @property
    def label_classes(self) -> dict[str, int]:
        """``{batch key: number of classes}`` of every label this transform mixes."""
        return {self.label_key: self.num_classes, **self.extra_labels}

    def __post_init__(self) -> None:
        for key, count in self.label_classes.items():
            if count < 1:
                raise ValueError(f"mixup needs >= 1 class for {key!r}, got {count}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup alphas must be >= 0, got mixup {self.mixup_alpha}, cutmix {self.cutmix_alpha}")
        for name in ("prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"mixup {name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"mixup label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def draw(self, generator: torch.Generator, height: int, width: int) -> MixDraw:
        """The batch's ``lam`` and CutMix box for images of ``height`` x ``width``, from ``generator`` alone."""
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        if (self.mixup_alpha == 0 and self.cutmix_alpha == 0) or rng.random() >= self.prob:
            return MixDraw(1.0)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return MixDraw(lam)
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
        left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
        return MixDraw(1.0 - (bottom - top) * (right - left) / (height * width), (top, bottom, left, right))

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        images = self._checked(batch)
        draw = self.draw(generator, images.shape[-2], images.shape[-1])
        partner = images.flip(0)
        if draw.box is not None:
            top, bottom, left, right = draw.box
            images = images.clone()
            images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        elif draw.lam < 1.0:
            images = images * draw.lam + partner * (1.0 - draw.lam)
        targets = {
            key: soft_targets(batch[key], count, self.label_smoothing, draw.lam)
            for key, count in self.label_classes.items()
        }
        return {**batch, self.image_key: images, **targets}

    def _checked(self, batch: Batch) -> torch.Tensor:
        """The images, once they and every label are checked."""
        for key in (self.image_key, *self.label_classes):
            if key not in batch:
                raise ValueError(f"mixup needs batch[{key!r}]; the batch has {sorted(batch)}")
        images = batch[self.image_key]
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"mixup needs float images [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
        for key, count in self.label_classes.items():
            self._check_labels(batch, key, count, images.shape[0])
        return images

    @staticmethod
    def _check_labels(batch: Batch, key: str, count: int, batch_size: int) -> None:
        labels = batch[key]
        if labels.ndim != 1 or labels.is_floating_point() or labels.shape[0] != batch_size:
            raise ValueError(f"mixup needs integer {key!r} [B={batch_size}], got {labels.dtype} {tuple(labels.shape)}")
        present = batch.get(f"{key}_present")
        if present is not None and not bool(present.all()):
            rows = (~present).nonzero().flatten().tolist()
            raise ValueError(f"mixup needs a {key!r} for every sample; rows {rows} lack one")
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < count):
            raise ValueError(f"{key!r} must lie in [0, {count}), got {labels.tolist()}")
