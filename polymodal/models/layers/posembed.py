"""Fixed sin-cos position embeddings (Transformer / MAE / MoCo-v3 convention, temperature 10000).

1D: ``pe[p] = [sin(p * w_0), ..., sin(p * w_{d/2-1}), cos(p * w_0), ..., cos(p * w_{d/2-1})]`` with
``w_i = 10000 ** (-i / (d / 2))`` (all sines first, then all cosines).
2D: for a grid flattened row-major, the first half of the dims is the 1D embedding (width ``d / 2``)
of the row coordinate and the second half that of the column coordinate. This matches MAE/4M on the
square grids they use and stays correct on non-square grids.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _sincos(positions: Tensor, dim: int) -> Tensor:
    frequencies = 10000.0 ** -(torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def sincos_1d(num_positions: int, dim: int) -> Tensor:
    """``[num_positions, dim]`` float32 embedding of positions ``0 .. num_positions - 1``."""
    if num_positions < 1:
        raise ValueError(f"num_positions must be >= 1, got {num_positions}")
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be a positive even number for 1D sin-cos embeddings, got {dim}")
    return _sincos(torch.arange(num_positions), dim)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """``[grid_h * grid_w, dim]`` float32 embedding of a row-major ``[grid_h, grid_w]`` grid."""
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid_h and grid_w must be >= 1, got {grid_h} and {grid_w}")
    if dim < 4 or dim % 4:
        raise ValueError(f"dim must be a positive multiple of 4 for 2D sin-cos embeddings, got {dim}")
    flat = torch.arange(grid_h * grid_w)
    return torch.cat([_sincos(flat // grid_w, dim // 2), _sincos(flat % grid_w, dim // 2)], dim=-1)
