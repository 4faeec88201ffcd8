"""Feed-forward blocks: a plain two-layer MLP and the gated SwiGLU; QuickGELU, the activation of OpenAI's CLIP."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden_dim(dim: int, mlp_ratio: float = 4.0, multiple_of: int = 256) -> int:
    """Hidden width giving SwiGLU about the parameters of a ``mlp_ratio`` MLP (Llama convention).

    Returns ``multiple_of * ceil((2/3 * mlp_ratio * dim) / multiple_of)``; e.g. 1024 -> 2816. Computed
    with exact fractions so that widths like 2/3 * 4 * 768 = 2048 are not bumped up by float rounding.
    """
    if dim < 1 or multiple_of < 1 or mlp_ratio <= 0:
        raise ValueError(f"dim, multiple_of and mlp_ratio must be positive, got {dim}, {multiple_of}, {mlp_ratio}")
    target = Fraction(2, 3) * Fraction(mlp_ratio) * dim
    return multiple_of * math.ceil(target / multiple_of)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the sigmoid approximation of GELU that OpenAI's CLIP weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """``fc2(activation(fc1(x)))``."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        bias: bool = True,
        activation: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = activation()
        self.fc2 = nn.Linear(hidden_dim, dim if out_dim is None else out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Gated feed-forward ``fc2(silu(fc1 x) * fc3 x)`` (Shazeer 2020, as in Llama).

    The hidden width is ``hidden_dim`` rounded up to a multiple of ``multiple_of``. Choosing the
    Llama width (2/3 * 4 * dim) is the caller's business: see :func:`swiglu_hidden_dim`.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, multiple_of: int = 1) -> None:
        super().__init__()
        if hidden_dim < 1 or multiple_of < 1:
            raise ValueError(f"hidden_dim and multiple_of must be >= 1, got {hidden_dim} and {multiple_of}")
        self.hidden_dim = multiple_of * math.ceil(hidden_dim / multiple_of)
        self.fc1 = nn.Linear(dim, self.hidden_dim, bias=bias)
        self.fc3 = nn.Linear(dim, self.hidden_dim, bias=bias)
        self.fc2 = nn.Linear(self.hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))
