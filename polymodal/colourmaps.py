"""Turn non-RGB modalities into viewable uint8 RGB images (for previews and image-conditioned conversations)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from matplotlib import colormaps

SEMSEG_COLOURS = np.array(
    [[60, 60, 60], [230, 90, 70], [80, 180, 90], [80, 120, 230], [235, 200, 60]], dtype=np.uint8
)  # background, sphere, cube, cylinder, cone
DEPTH_COLOURMAP = "magma"
MIN_DEPTH = 1e-3  # metres; depths below are shown as this near


def depth_range(depths: Iterable[torch.Tensor]) -> tuple[float, float]:
    """The nearest and farthest depth (metres) over ``depths``: one colour scale for depth maps shown side by side."""
    values = [depth.detach().float().clamp_min(MIN_DEPTH) for depth in depths]
    if not values:
        raise ValueError("depth_range needs at least one depth map")
    return min(v.min().item() for v in values), max(v.max().item() for v in values)


def _depth_colours(scaled: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (1 = near) -> uint8 colours."""
    return (colormaps[DEPTH_COLOURMAP](scaled)[..., :3] * 255).astype(np.uint8)


def depth_to_rgb(depth: torch.Tensor, near_far: tuple[float, float] | None = None) -> np.ndarray:
    """[1,H,W] metres -> uint8 [H,W,3]; inverse depth through 'magma' so near is bright and far is black.

    The scale runs from ``near_far`` (metres; depths outside are clamped), by default from this map's own nearest
    to farthest depth: give several maps one range (:func:`depth_range`) to compare their colours.
    """
    near, far = near_far if near_far is not None else depth_range([depth])
    inverse = 1.0 / depth[0].float().clamp(min(near, far), far).numpy()
    scaled = (inverse - 1.0 / far) / max(1.0 / near - 1.0 / far, 1e-6)
    return _depth_colours(scaled)


def depth_ramp(steps: int) -> np.ndarray:
    """uint8 [steps, 3]: the colours of :func:`depth_to_rgb` from near (first) to far (last), for a colour bar.
    Step ``i`` is the inverse depth ``i / (steps - 1)`` of the way from near to far."""
    return _depth_colours(np.linspace(1.0, 0.0, steps))


def normal_to_rgb(normal: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [-1,1] -> uint8 [H,W,3] with the contract's (n+1)/2·255 mapping."""
    return np.clip(np.rint((normal.permute(1, 2, 0).numpy() + 1) / 2 * 255), 0, 255).astype(np.uint8)


def semseg_to_rgb(semseg: torch.Tensor) -> np.ndarray:
    """[H,W] class ids -> uint8 [H,W,3] with one fixed colour per class."""
    ids = semseg.numpy()
    if ids.min() < 0 or ids.max() >= len(SEMSEG_COLOURS):
        raise ValueError(f"semseg class ids must be in [0, {len(SEMSEG_COLOURS) - 1}], got {ids.min()}..{ids.max()}")
    return SEMSEG_COLOURS[ids]
