"""Turn non-RGB modalities into viewable uint8 RGB images (for previews and image-conditioned conversations)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps

SEMSEG_COLOURS = np.array(
    [[60, 60, 60], [230, 90, 70], [80, 180, 90], [80, 120, 230], [235, 200, 60]], dtype=np.uint8
)  # background, sphere, cube, cylinder, cone


def depth_to_rgb(depth: torch.Tensor) -> np.ndarray:
    """[1,H,W] metres -> uint8 [H,W,3]; inverse depth through 'magma' so near is bright and the far plane is black."""
    inverse = 1.0 / depth[0].clamp_min(1e-3).numpy()
    low, high = inverse.min(), inverse.max()
    scaled = (inverse - low) / max(high - low, 1e-6)
    return (colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8)


def normal_to_rgb(normal: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [-1,1] -> uint8 [H,W,3] with the contract's (n+1)/2·255 mapping."""
    return np.clip(np.rint((normal.permute(1, 2, 0).numpy() + 1) / 2 * 255), 0, 255).astype(np.uint8)


def semseg_to_rgb(semseg: torch.Tensor) -> np.ndarray:
    """[H,W] class ids -> uint8 [H,W,3] with one fixed colour per class."""
    ids = semseg.numpy()
    if ids.min() < 0 or ids.max() >= len(SEMSEG_COLOURS):
        raise ValueError(f"semseg class ids must be in [0, {len(SEMSEG_COLOURS) - 1}], got {ids.min()}..{ids.max()}")
    return SEMSEG_COLOURS[ids]
