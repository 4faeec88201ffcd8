"""Normalisation layers computed in float32 and cast back, so they stay stable under bf16 autocast."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm with an optional bias, computed in float32 whatever the input or autocast dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=True, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), bias, self.eps)
        return out.to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm ``x / sqrt(mean(x**2) + eps) * weight`` (no centring, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.rms_norm(x.float(), (self.dim,), self.weight.float(), self.eps)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


NormKind = Literal["rmsnorm", "layernorm"]
NORM_KINDS = ("rmsnorm", "layernorm")


def norm_factory(kind: NormKind, eps: float = 1e-6, bias: bool = True) -> Callable[[int], nn.Module]:
    """``dim -> norm``: an :class:`RMSNorm` or a :class:`LayerNorm` (``bias`` only concerns the LayerNorm)."""
    if kind not in NORM_KINDS:
        raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")
    return partial(RMSNorm, eps=eps) if kind == "rmsnorm" else partial(LayerNorm, eps=eps, bias=bias)


class PerHeadLayerNorm(nn.Module):
    """LayerNorm over ``head_dim`` with a weight and bias of its own for every head (Chameleon's QK-norm).

    Normalises ``[..., num_heads, head_dim]``: statistics over the last dim only, then the affine of each head,
    ``weight`` and ``bias`` of shape ``[num_heads, head_dim]``. Chameleon trained its heads split over
    model-parallel ranks with no reduction between them, hence one affine per head rather than one shared.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim))
        self.bias = nn.Parameter(torch.empty(num_heads, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            normalised = F.layer_norm(x.float(), (self.head_dim,), eps=self.eps)
            out = normalised * self.weight.float() + self.bias.float()
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_heads={self.weight.shape[0]}, head_dim={self.head_dim}, eps={self.eps}"
