"""Rotary position embeddings (RoPE) with precomputed cos/sin tables.

Pairing convention: "rotate half" (GPT-NeoX, Hugging Face Llama). A rotary span of ``d`` dims is split
into halves ``[x1, x2]``; dim ``i`` of ``x1`` and dim ``i`` of ``x2`` form one pair, rotated by the
angle ``position * theta ** (-2i / d)``:
``x1' = x1 cos - x2 sin`` and ``x2' = x2 cos + x1 sin``.
(The original RoFormer/Meta-Llama code pairs *adjacent* dims instead; weights trained with one
convention need their q/k projection rows permuted to be used with the other.)

The tables are non-persistent buffers computed in float64 and stored in float32; ``reset_parameters``
recomputes them, which is needed after building a model on the meta device and calling ``to_empty``.
Keep them float32: casting the whole model with ``.to(torch.bfloat16)`` would round them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def rotary_angles(positions: Tensor, rotary_dim: int, theta: float) -> Tensor:
    """``[N, rotary_dim]`` angles in rotate-half layout (the ``rotary_dim / 2`` frequencies, twice)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    inverse_frequencies = theta**-exponents
    angles = positions.to(torch.float64)[:, None] * inverse_frequencies[None, :]
    return torch.cat([angles, angles], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, sections: int = 1) -> Tensor:
    """Rotate ``x`` (last dim = head_dim) by the given tables in float32; returns ``x``'s dtype.

    ``sections`` splits the head dim into that many equal spans, each rotated half-wise on its own
    (1 for 1D RoPE, 2 for axial 2D RoPE).
    """
    x_float = x.float()
    halves = x_float.unflatten(-1, (sections, 2, x.shape[-1] // (2 * sections)))
    rotated = torch.stack([-halves[..., 1, :], halves[..., 0, :]], dim=-2).flatten(-3)
    return (x_float * cos + rotated * sin).to(x.dtype)


class _RotaryTable(nn.Module, ABC):
    """Holds the cos/sin tables of one position layout and applies them to q and k.

    Subclasses define ``_angles()`` (``[num_positions, head_dim]``) and ``sections``.
    """

    sections: int

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        angles = self._angles()
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.cos.shape[0]

    @abstractmethod
    def _angles(self) -> Tensor:
        """``[num_positions, head_dim]`` float64 rotation angles of this layout."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        angles = self._angles()
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, q: Tensor, k: Tensor, position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` and ``k`` (``[B, H, T, head_dim]``, head counts may differ).

        ``position_ids`` (``[B, T]`` or ``[1, T]``) indexes rows of the table; ``None`` means
        ``arange(T)``. Ids must be smaller than ``max_seq_len``.
        """
        seq_len = q.shape[-2]
        for name, tensor in (("q", q), ("k", k)):
            if tensor.dim() != 4 or tensor.shape[-1] != self.head_dim or tensor.shape[-2] != seq_len:
                raise ValueError(
                    f"{name} must be [B, H, T={seq_len}, head_dim={self.head_dim}], got {tuple(tensor.shape)}"
                )
        if position_ids is None:
            if seq_len > self.max_seq_len:
                raise ValueError(f"sequence length {seq_len} exceeds max_seq_len={self.max_seq_len}")
            cos, sin = self.cos[:seq_len], self.sin[:seq_len]
        else:
            batch_ok = position_ids.dim() == 2 and position_ids.shape[0] in (1, q.shape[0])
            if not batch_ok or position_ids.shape[-1] != seq_len:
                raise ValueError(
                    f"position_ids must be [B={q.shape[0]} or 1, T={seq_len}], got {tuple(position_ids.shape)}"
                )
            cos, sin = self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)
        return apply_rotary(q, cos, sin, self.sections), apply_rotary(k, cos, sin, self.sections)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, theta={self.theta}"


class RotaryEmbedding(_RotaryTable):
    """1D RoPE over token positions ``0 .. max_seq_len - 1``, rotating the whole head dim."""

    sections = 1

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0) -> None:
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        self._num_positions = max_seq_len
        super().__init__(head_dim, theta)

    def _angles(self) -> Tensor:
        return rotary_angles(torch.arange(self._num_positions), self.head_dim, self.theta)


class AxialRotaryEmbedding2D(_RotaryTable):
    """Axial 2D RoPE for a ``[h, w]`` patch grid flattened row-major (token ``n`` is row ``n // w``,
    column ``n % w``; non-square grids are fine).

    The first half of the head dim is rotated by the row coordinate, the second half by the column
    coordinate, each with 1D rotate-half RoPE over ``head_dim / 2`` dims.

    ``num_prefix_tokens`` leading non-grid tokens (e.g. CLS, registers) get position (0, 0), i.e. the
    identity rotation, the same as the top-left patch. ``position_ids`` index this flattened table of
    ``num_prefix_tokens + h * w`` rows (useful when only a subset of patches is fed to the model).
    """

    sections = 2

    def __init__(
        self, head_dim: int, grid_size: tuple[int, int], theta: float = 10000.0, num_prefix_tokens: int = 0
    ) -> None:
        if head_dim % 4:
            raise ValueError(f"head_dim must be divisible by 4 for 2D axial RoPE, got {head_dim}")
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"grid_size must be two positive ints (h, w), got {grid_size}")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = num_prefix_tokens
        super().__init__(head_dim, theta)

    def _angles(self) -> Tensor:
        height, width = self.grid_size
        flat = torch.arange(height * width)
        prefix = torch.zeros(self.num_prefix_tokens, dtype=torch.long)
        rows = torch.cat([prefix, flat // width])
        cols = torch.cat([prefix, flat % width])
        half = self.head_dim // 2
        return torch.cat([rotary_angles(rows, half, self.theta), rotary_angles(cols, half, self.theta)], dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}"
