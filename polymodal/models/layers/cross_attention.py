"""Cross-attention and the encoder-decoder (T5-style) decoder block built on it.

Masks follow :mod:`polymodal.models.layers.attention`: bool, ``True`` = may attend, broadcasting to
``[B, H, Tq, Tk]``. A query row left with no key to attend (a sample whose context is all padding) attends every
key uniformly, as a ``-finfo.max`` fill does, so the output is finite.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from polymodal.models.layers.attention import Attention, QKNorm, masked_attention, qk_norms
from polymodal.models.layers.drop_path import DropPath
from polymodal.models.layers.mask_rules import AttentionMask
from polymodal.models.layers.norm import RMSNorm


class CrossAttention(nn.Module):
    """Queries ``q_proj(x)`` attend keys ``k_proj(context)`` and values ``v_proj(context)``; output ``o_proj``.

    Args:
        dim: width of ``x``, of ``context`` and of the output.
        num_heads: attention heads; ``head_dim = dim // num_heads``.
        qkv_bias / out_bias: biases of the input / output projections.
        qk_norm: as in :class:`~polymodal.models.layers.attention.Attention` (see ``qk_norms``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        out_bias: bool = False,
        qk_norm: QKNorm = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} >= 1")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.o_proj = nn.Linear(dim, dim, bias=out_bias)
        self.q_norm, self.k_norm = qk_norms(qk_norm, num_heads, num_heads, self.head_dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() != 3 or context.dim() != 3:
            raise ValueError(f"x and context must be [B, T, D], got {tuple(x.shape)} and {tuple(context.shape)}")
        batch, q_len, _ = x.shape
        kv_len = context.shape[1]
        q = self.q_proj(x).view(batch, q_len, -1, self.head_dim)
        k = self.k_proj(context).view(batch, kv_len, -1, self.head_dim)
        v = self.v_proj(context).view(batch, kv_len, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if mask is not None:
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
            mask = mask | ~mask.any(dim=-1, keepdim=True)  # no key to attend: attend all (finite, uniform)
        out = masked_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, q_len, -1))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


class CrossAttentionBlock(nn.Module):
    """Pre-norm decoder block: self-attention, cross-attention to a context, MLP; each branch through stochastic depth.

    ``x + self_attn(self_attn_norm(x))``, then ``x + cross_attn(cross_attn_query_norm(x),
    cross_attn_context_norm(context))``, then ``x + mlp(mlp_norm(x))``. The context is normalised in every block
    (each block has its own context norm), as in 4M.
    """

    def __init__(
        self,
        dim: int,
        self_attention: Attention,
        cross_attention: CrossAttention,
        mlp: nn.Module,
        norm: Callable[[int], nn.Module] = RMSNorm,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn_norm = norm(dim)
        self.self_attn = self_attention
        self.cross_attn_query_norm = norm(dim)
        self.cross_attn_context_norm = norm(dim)
        self.cross_attn = cross_attention
        self.mlp_norm = norm(dim)
        self.mlp = mlp
        self.drop_path = DropPath(drop_path)

    def forward(
        self, x: Tensor, context: Tensor, self_mask: AttentionMask = None, cross_mask: Tensor | None = None
    ) -> Tensor:
        x = x + self.drop_path(self.self_attn(self.self_attn_norm(x), self_mask))
        x = x + self.drop_path(
            self.cross_attn(self.cross_attn_query_norm(x), self.cross_attn_context_norm(context), cross_mask)
        )
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


class CrossAttentionTransformer(nn.Module):
    """A stack of :class:`CrossAttentionBlock` (an ``nn.ModuleList``: one FSDP/checkpoint unit each), a final norm."""

    def __init__(self, blocks: list[CrossAttentionBlock], final_norm: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm

    def forward(
        self, x: Tensor, context: Tensor, self_mask: AttentionMask = None, cross_mask: Tensor | None = None
    ) -> Tensor:
        for block in self.blocks:
            x = block(x, context, self_mask, cross_mask)
        return x if self.final_norm is None else self.final_norm(x)
