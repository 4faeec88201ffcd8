"""Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero the input for a random ``p`` fraction of samples and scale survivors by ``1 / (1 - p)``,
    so the expectation is unchanged. Identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        sample_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        survivors = x.new_empty(sample_shape).bernoulli_(keep)
        return x * survivors / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
