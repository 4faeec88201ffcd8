"""Pre-norm transformer blocks, the block stack, and a builder for the common configurations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polymodal.models.layers.attention import Attention, QKNorm
from polymodal.models.layers.drop_path import DropPath
from polymodal.models.layers.kv_cache import KVCache, LayerCache
from polymodal.models.layers.mask_rules import AttentionMask
from polymodal.models.layers.mlp import MLP, QuickGELU, SwiGLU, swiglu_hidden_dim
from polymodal.models.layers.moe import MOE_STATS, MoEFeedForward
from polymodal.models.layers.norm import NormKind, RMSNorm, norm_factory
from polymodal.models.layers.rope import AxialRotaryEmbedding2D, RotaryEmbedding


class TransformerBlock(nn.Module):
    """Two residual branches, attention then MLP, each ``x + drop_path(dropout(branch))`` where the branch is

    * ``attn(attn_norm(x))`` / ``mlp(mlp_norm(x))``: pre-norm (Llama, the default);
    * ``attn_norm(attn(x))`` / ``mlp_norm(mlp(x))`` with ``res_post_norm``: the branch output is normalised before
      it joins the residual stream (Swin v2's res-post-norm; Chameleon-34B's ``swin_norm``).

    ``residual_dropout`` (standard dropout on each branch output) and stochastic depth act in training mode only.
    With a :class:`~polymodal.models.layers.moe.MoEFeedForward` as ``mlp`` the block returns ``(x, router_stats)``.
    """

    def __init__(
        self,
        dim: int,
        attention: Attention,
        mlp: nn.Module,
        norm: Callable[[int], nn.Module] = RMSNorm,
        drop_path: float = 0.0,
        residual_dropout: float = 0.0,
        res_post_norm: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= residual_dropout < 1.0:
            raise ValueError(f"residual_dropout must be in [0, 1), got {residual_dropout}")
        self.attn_norm = norm(dim)
        self.attn = attention
        self.mlp_norm = norm(dim)
        self.mlp = mlp
        self.drop_path = DropPath(drop_path)
        self.residual_dropout = nn.Dropout(residual_dropout) if residual_dropout else nn.Identity()
        self.res_post_norm = res_post_norm

    def forward(
        self,
        x: Tensor,
        mask: AttentionMask = None,
        is_causal: bool = False,
        position_ids: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        # The cache goes by keyword: tensor-parallel plans prepare the attention's positional inputs only.
        if self.res_post_norm:
            attended = self.attn_norm(self.attn(x, mask, is_causal, position_ids, cache=cache))
        else:
            attended = self.attn(self.attn_norm(x), mask, is_causal, position_ids, cache=cache)
        x = x + self.drop_path(self.residual_dropout(attended))
        transformed = self.mlp(x if self.res_post_norm else self.mlp_norm(x))
        stats = None
        if isinstance(self.mlp, MoEFeedForward):
            transformed, stats = transformed
        if self.res_post_norm:
            transformed = self.mlp_norm(transformed)
        x = x + self.drop_path(self.residual_dropout(transformed))
        return x if stats is None else (x, stats)


class Transformer(nn.Module):
    """A stack of blocks (an ``nn.ModuleList``, so each can be sharded/checkpointed on its own) and
    an optional final norm.

    When some blocks are mixture-of-experts blocks (``has_moe``) it returns ``(x, moe_stats)``: each of
    :data:`~polymodal.models.layers.moe.MOE_STATS` as a ``[num_moe_layers]`` tensor."""

    def __init__(self, blocks: list[TransformerBlock], final_norm: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.has_moe = any(isinstance(block.mlp, MoEFeedForward) for block in blocks)

    def forward(
        self,
        x: Tensor,
        mask: AttentionMask = None,
        is_causal: bool = False,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """With a ``cache`` (decoding), block ``i`` appends to and attends ``cache.layer(i)``. Without one the blocks
        are called exactly as in training (wrappers such as activation checkpointing see no extra argument)."""
        layer_stats: list[dict[str, Tensor]] = []
        for index, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, mask, is_causal, position_ids)
            else:
                x = block(x, mask, is_causal, position_ids, cache=cache.layer(index))
            if isinstance(x, tuple):
                x, stats = x
                layer_stats.append(stats)
        x = x if self.final_norm is None else self.final_norm(x)
        if not self.has_moe:
            return x
        return x, {name: torch.stack([stats[name] for stats in layer_stats]) for name in MOE_STATS}


def _choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _build_moe(dim: int, hidden_dim: int, mlp: str, options: dict[str, Any]) -> MoEFeedForward:
    allowed = ("num_experts", "top_k", "capacity_factor", "normalize_top_k", "kind")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown moe option(s) {unknown}; valid: {list(allowed)}")
    if "num_experts" not in options:
        raise ValueError("moe needs num_experts")
    kind = options.get("kind", mlp)
    return MoEFeedForward(
        dim,
        hidden_dim,
        options["num_experts"],
        top_k=options.get("top_k", 1),
        capacity_factor=options.get("capacity_factor"),
        kind=kind,
        bias=kind in ("gelu", "quick_gelu"),
        normalize_top_k=options.get("normalize_top_k", False),
    )


def build_transformer(
    dim: int,
    depth: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    mlp: Literal["swiglu", "gelu", "quick_gelu"] = "swiglu",
    mlp_ratio: float = 4.0,
    multiple_of: int = 256,
    norm: NormKind = "rmsnorm",
    norm_bias: bool = True,
    norm_eps: float = 1e-6,
    qk_norm: QKNorm = False,
    rope: Literal["1d", "2d"] | None = "1d",
    max_seq_len: int = 2048,
    grid_size: tuple[int, int] | None = None,
    rope_theta: float = 10000.0,
    qkv_bias: bool = False,
    out_bias: bool = False,
    drop_path: float = 0.0,
    final_norm: bool = True,
    num_prefix_tokens: int = 0,
    ffn_dim: int | None = None,
    residual_dropout: float = 0.0,
    res_post_norm: bool = False,
    moe: dict[str, Any] | None = None,
) -> Transformer:
    """Build a transformer (pre-norm unless ``res_post_norm``).

    ``mlp="swiglu"`` uses the Llama width :func:`swiglu_hidden_dim` (``mlp_ratio``, ``multiple_of``);
    ``"gelu"`` a biased GELU MLP of width ``int(mlp_ratio * dim)``, ``"quick_gelu"`` the same with
    :class:`QuickGELU` (OpenAI CLIP); ``ffn_dim`` sets the hidden width of any of them directly.
    ``qkv_bias`` / ``out_bias``: biases of the attention's input / output projections. ``norm_bias`` only
    concerns LayerNorm; ``norm_eps`` is the epsilon of the block and final norms (QK-norms: see
    :func:`~polymodal.models.layers.attention.qk_norms`). ``rope="1d"`` covers
    ``max_seq_len`` positions; ``"2d"`` needs ``grid_size`` and takes ``num_prefix_tokens`` unrotated
    leading tokens. One rotary module (tables only, no parameters) is shared by all blocks. Stochastic
    depth grows linearly from 0 at the first block to ``drop_path`` at the last; ``residual_dropout`` and
    ``res_post_norm`` are the same in every :class:`TransformerBlock`.

    ``moe`` (e.g. ``{num_experts: 4, top_k: 1}``) turns every block's feed-forward into a
    :class:`~polymodal.models.layers.moe.MoEFeedForward` whose experts have the width and kind of the dense one
    (``kind: geglu`` picks a GELU-gated expert); its other keys are ``capacity_factor`` and ``normalize_top_k``.
    """
    _choice("mlp", mlp, ("swiglu", "gelu", "quick_gelu"))
    _choice("rope", rope, ("1d", "2d", None))
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if dim % num_heads:
        raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
    head_dim = dim // num_heads

    rotary: nn.Module | None = None
    if rope == "1d":
        rotary = RotaryEmbedding(head_dim, max_seq_len, theta=rope_theta)
    elif rope == "2d":
        if grid_size is None:
            raise ValueError("rope='2d' needs grid_size=(h, w)")
        rotary = AxialRotaryEmbedding2D(head_dim, grid_size, theta=rope_theta, num_prefix_tokens=num_prefix_tokens)

    make_norm = norm_factory(norm, norm_eps, norm_bias)

    dense_width = swiglu_hidden_dim(dim, mlp_ratio, multiple_of) if mlp == "swiglu" else int(mlp_ratio * dim)
    hidden_dim = ffn_dim or dense_width

    def make_mlp() -> nn.Module:
        if moe is not None:
            return _build_moe(dim, hidden_dim, mlp, moe)
        if mlp == "swiglu":
            return SwiGLU(dim, hidden_dim)
        activation = QuickGELU if mlp == "quick_gelu" else nn.GELU
        return MLP(dim, hidden_dim, activation=activation)

    blocks = [
        TransformerBlock(
            dim,
            Attention(dim, num_heads, num_kv_heads, qkv_bias=qkv_bias, out_bias=out_bias, qk_norm=qk_norm, rope=rotary),
            make_mlp(),
            norm=make_norm,
            drop_path=drop_path * index / (depth - 1) if depth > 1 else 0.0,
            residual_dropout=residual_dropout,
            res_post_norm=res_post_norm,
        )
        for index in range(depth)
    ]
    return Transformer(blocks, make_norm(dim) if final_norm else None)
