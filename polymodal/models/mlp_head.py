"""A position-wise MLP head (AIMv1's pixel head): tokens in, one prediction per patch out.

``Linear(dim -> width)`` (+ a fixed 2D sin-cos position table), ``depth`` pre-norm residual MLP blocks
``x + MLP(norm(x))``, a final norm and ``Linear(width -> out_dim)``. Nothing mixes tokens, so the prediction at a
patch sees only what the trunk let that patch see (in AIM: the prefix-causal mask). AIMv1 built these blocks from
transformer blocks with the attention replaced by an identity, which left an extra ``x + norm(x)`` term in each;
here the blocks are the plain residual MLPs that the design intends.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.models.layers.mlp import MLP
from polymodal.models.layers.norm import NormKind, norm_factory
from polymodal.models.layers.posembed import sincos_2d
from polymodal.models.meta import DataDict, ReadWriteBlock


class ResidualMLP(nn.Module):
    """``x + MLP(norm(x))``: a pre-norm transformer block without its attention branch."""

    def __init__(self, dim: int, hidden_dim: int, norm: NormKind = "layernorm", norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = norm_factory(norm, norm_eps)(dim)
        self.mlp = MLP(dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))


class MLPHead(ReadWriteBlock):
    """Per-patch predictions ``[B, N, out_dim]`` from tokens ``[B, E + N, dim]``; the E extra tokens in front of the
    patches (their number read from ``extra_tokens_key``, e.g. a ViT's CLS and registers) are dropped first.

    Args:
        dim: token width.
        out_dim: prediction width (pixels of a patch: ``ph * pw * C``).
        width: width of the MLP blocks (default ``dim``).
        depth: number of residual MLP blocks (0: projections and norm only).
        mlp_ratio: hidden width of each block's MLP, as a multiple of ``width``.
        norm, norm_eps: the blocks' and the final norm.
        grid_size: ``(h, w)`` of the patch grid to add a fixed 2D sin-cos position table after the input projection
            (as AIMv1); None for none.
        read_key, write_key: tokens in, predictions out; extra_tokens_key: None when the tokens are all patches.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        width: int | None = None,
        depth: int = 1,
        mlp_ratio: float = 4.0,
        norm: NormKind = "layernorm",
        norm_eps: float = 1e-6,
        grid_size: tuple[int, int] | None = None,
        read_key: str = "tokens",
        write_key: str = "pixel_pred",
        extra_tokens_key: str | None = "num_extra_tokens",
    ) -> None:
        super().__init__([read_key] + ([extra_tokens_key] if extra_tokens_key else []), write_key)
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        width = dim if width is None else width
        self.extra_tokens_key = extra_tokens_key
        self.proj_in = nn.Linear(dim, width)
        self.grid = None if grid_size is None else (int(grid_size[0]), int(grid_size[1]))
        if self.grid is not None:
            self.register_buffer("pos_embed", torch.empty(1, self.grid[0] * self.grid[1], width), persistent=False)
        self.blocks = nn.ModuleList(ResidualMLP(width, int(mlp_ratio * width), norm, norm_eps) for _ in range(depth))
        self.norm = norm_factory(norm, norm_eps)(width)
        self.proj_out = nn.Linear(width, out_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Recompute the sin-cos table (children keep their own initialisation)."""
        if self.grid is not None:
            self.pos_embed.copy_(sincos_2d(*self.grid, self.pos_embed.shape[-1])[None])

    def forward(self, data: DataDict) -> DataDict:
        tokens = data[self.read_keys[0]]
        if self.extra_tokens_key is not None:
            tokens = tokens[:, int(data[self.extra_tokens_key]) :]
        x = self.proj_in(tokens)
        if self.grid is not None:
            if x.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(
                    f"MLPHead got {x.shape[1]} patch tokens; its grid {self.grid} has {self.pos_embed.shape[1]}"
                )
            x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        data[self.write_keys[0]] = self.proj_out(self.norm(x))
        return data
