"""The one self-attention module: multi-head / grouped-query attention over SDPA.

Boolean masks follow SDPA semantics (``True`` = may attend) and broadcast to ``[B, H, T, T]``.
A mask is never ignored: with ``is_causal=True`` the causal mask is AND-ed into it. A query row
left with no key to attend (all-padding samples, left padding under a causal mask) is allowed to
attend itself, so SDPA never sees an empty row and never returns NaN.

Two mask values take faster kernels (:mod:`polymodal.models.layers.mask_rules`): a
:class:`~polymodal.models.layers.mask_rules.CausalMask` runs SDPA with ``is_causal`` and no mask tensor, a
FlexAttention ``BlockMask`` runs ``flex_attention``. The dense bool mask is the reference both are tested against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from polymodal.models.layers.kv_cache import LayerCache
from polymodal.models.layers.mask_rules import AttentionMask, CausalMask
from polymodal.models.layers.norm import PerHeadLayerNorm, RMSNorm


def _sdpa_supports_enable_gqa() -> bool:
    """Probe SDPA once for the ``enable_gqa`` keyword (torch >= 2.5).

    ``inspect.signature`` cannot read the signature of this builtin, so a tiny call answers instead.
    """
    query = torch.zeros(1, 2, 1, 2)
    key_value = torch.zeros(1, 1, 1, 2)
    try:
        F.scaled_dot_product_attention(query, key_value, key_value, enable_gqa=True)
    except TypeError:
        return False
    return True


SDPA_SUPPORTS_ENABLE_GQA = _sdpa_supports_enable_gqa()


AttentionKernel = Callable[[Tensor, Tensor, Tensor, AttentionMask, bool, float], Tensor]
QKNorm: TypeAlias = bool | Literal["rmsnorm", "per_head_layernorm"] | Callable[[int], nn.Module]


def qk_norms(
    qk_norm: QKNorm, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[nn.Module, nn.Module] | tuple[None, None]:
    """The query and key norms over ``head_dim`` that ``qk_norm`` names; ``(None, None)`` for no QK-norm.

    ``True`` / ``"rmsnorm"``: one RMSNorm weight shared by all heads (Qwen3, OLMo 2); ``"per_head_layernorm"``:
    a LayerNorm with a weight and bias per head (Chameleon, :class:`PerHeadLayerNorm`); a factory
    ``norm(head_dim) -> nn.Module``: that norm, shared by all heads (4M uses a bias-free LayerNorm).
    """
    if not qk_norm:
        return None, None
    if qk_norm == "per_head_layernorm":
        return PerHeadLayerNorm(num_heads, head_dim), PerHeadLayerNorm(num_kv_heads, head_dim)
    factory = RMSNorm if qk_norm is True or qk_norm == "rmsnorm" else qk_norm
    if not callable(factory):
        raise ValueError(f"qk_norm must be a bool, 'rmsnorm', 'per_head_layernorm' or a factory, got {qk_norm!r}")
    return factory(head_dim), factory(head_dim)


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: AttentionMask = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    q_offset: int = 0,
) -> Tensor:
    """SDPA of queries ``[B, H, Tq, d]`` against keys/values ``[B, Hkv, Tk, d]`` (GQA when Hkv < H).

    The queries are positions ``q_offset .. q_offset + Tq`` of the key sequence (0 unless the sequence is split
    across ranks or the earlier keys come from a cache). A bool ``mask`` broadcasts to ``[B, H, Tq, Tk]``, or covers
    every query position (``[.., Tk, Tk]``), in which case this call's rows are taken from it. ``is_causal`` is AND-ed
    into the mask; a query row left with nothing to attend may attend its own position, so the result is never NaN.
    A :class:`CausalMask` attends keys ``0 .. q_offset + i`` from query ``i`` without a mask tensor; a ``BlockMask``
    runs FlexAttention (whole sequences only: no ``q_offset``, dropout or ``is_causal`` on top).
    """
    if isinstance(mask, BlockMask):
        return _flex_attention(q, k, v, mask, is_causal, dropout_p, q_offset)
    batch, heads, q_len, _ = q.shape
    kv_len = k.shape[-2]
    groups = heads // k.shape[1]
    gqa_kwargs = {}
    if groups > 1 and SDPA_SUPPORTS_ENABLE_GQA:
        gqa_kwargs["enable_gqa"] = True
    elif groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if isinstance(mask, CausalMask):
        return _causal_attention(q, k, v, dropout_p, q_offset, gqa_kwargs)
    if mask is None and q_offset == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, **gqa_kwargs)
    attn_mask = _query_rows(mask, batch, heads, q_len, kv_len, q_offset)
    positions = torch.arange(q_len, device=q.device)[:, None] + q_offset
    if is_causal:
        causal = positions >= torch.arange(kv_len, device=q.device)
        attn_mask = causal if attn_mask is None else attn_mask & causal
    if attn_mask is not None:
        own_position = positions == torch.arange(kv_len, device=q.device)
        attn_mask = attn_mask | (~attn_mask.any(dim=-1, keepdim=True) & own_position)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, **gqa_kwargs)


def _causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, q_offset: int, gqa_kwargs: dict) -> Tensor:
    """Query ``i`` attends keys ``0 .. q_offset + i``: the later keys are dropped, so the causal diagonal ends in the
    bottom-right corner (SDPA's plain ``is_causal`` when ``q_offset`` is 0, else a lower-right causal bias, which
    CUDA's flash and memory-efficient kernels take without a mask tensor)."""
    q_len, end = q.shape[-2], q_offset + q.shape[-2]
    if k.shape[-2] < end:
        raise ValueError(f"a causal mask needs keys up to position {end}, got {k.shape[-2]} keys (q_offset={q_offset})")
    k, v = k[..., :end, :], v[..., :end, :]
    if q_offset == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, **gqa_kwargs)
    bias = causal_lower_right(q_len, end)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, **gqa_kwargs)


@functools.cache
def _compiled_flex_attention() -> Callable[..., Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def _flex_attention(
    q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask, is_causal: bool, dropout_p: float, q_offset: int
) -> Tensor:
    """FlexAttention with ``block_mask``: compiled into one fused kernel on accelerators; on the CPU eager, which
    torch runs unfused and forward-only (its CPU build has no FlexAttention backward)."""
    if is_causal or dropout_p or q_offset:
        raise ValueError(
            "a FlexAttention block mask takes no is_causal, dropout or q_offset: fold causality into the mask "
            f"(resolve_mask does), got is_causal={is_causal}, dropout_p={dropout_p}, q_offset={q_offset}"
        )
    if block_mask.shape[-2:] != (q.shape[-2], k.shape[-2]):
        raise ValueError(
            f"block mask of shape {tuple(block_mask.shape)} does not fit {q.shape[-2]} queries and {k.shape[-2]} keys"
        )
    attend = flex_attention if q.device.type == "cpu" else _compiled_flex_attention()
    return attend(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


def _query_rows(mask: Tensor | None, batch: int, heads: int, q_len: int, kv_len: int, q_offset: int) -> Tensor | None:
    """Validate ``mask`` and cut out the rows of this call's queries."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"mask must be a bool tensor, a CausalMask or a BlockMask, got {type(mask).__name__} "
            "(a MaskRule is turned into one by mask_rules.resolve_mask)"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
    if mask.dim() == 4 and mask.shape[-2] not in (1, q_len) and mask.shape[-2] >= q_offset + q_len:
        mask = mask[..., q_offset : q_offset + q_len, :]
    target = (batch, heads, q_len, kv_len)
    try:
        broadcast_ok = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        broadcast_ok = False
    if not broadcast_ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to [B, H, Tq, Tk] = {target}")
    return mask


class Attention(nn.Module):
    """Self-attention with separate ``q_proj, k_proj, v_proj, o_proj`` linears.

    Args:
        dim: model width (input and output).
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention); defaults to ``num_heads``.
        head_dim: per-head width; defaults to ``dim // num_heads``.
        qkv_bias / out_bias: biases of the input / output projections.
        qk_norm: normalise queries and keys over ``head_dim`` (``q_norm``, ``k_norm``) before RoPE, as
            :func:`qk_norms` builds them.
        rope: a module called as ``rope(q, k, position_ids) -> (q, k)`` on ``[B, H, T, head_dim]``.
        dropout: attention-probability dropout, applied in training mode only.

    With a ``cache`` (decoding), the keys and values of ``x`` are appended to it and the queries attend every cached
    position; ``mask`` then covers them all (``[.., T, cached + T]``). The cached path always runs
    :func:`masked_attention`: an installed kernel serves training (a sequence split across ranks).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        qk_norm: QKNorm = False,
        rope: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or num_kv_heads < 1:
            raise ValueError(f"num_heads and num_kv_heads must be >= 1, got {num_heads} and {num_kv_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} (or pass head_dim)")
            head_dim = dim // num_heads
        rope_head_dim = getattr(rope, "head_dim", head_dim)
        if rope_head_dim != head_dim:
            raise ValueError(f"rope head_dim={rope_head_dim} does not match attention head_dim={head_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=out_bias)
        self.q_norm, self.k_norm = qk_norms(qk_norm, num_heads, num_kv_heads, head_dim)
        self.rope = rope
        self.kernel: AttentionKernel | None = None  # None: masked_attention; a parallelize plan may install another

    def forward(
        self,
        x: Tensor,
        mask: AttentionMask = None,
        is_causal: bool = False,
        position_ids: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"x must be [B, T, D], got shape {tuple(x.shape)}")
        batch, seq_len, _ = x.shape
        # Head counts come from the projections' outputs (-1), so column-sharded projections just work.
        q = self.q_proj(x).view(batch, seq_len, -1, self.head_dim)
        k = self.k_proj(x).view(batch, seq_len, -1, self.head_dim)
        v = self.v_proj(x).view(batch, seq_len, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.rope is not None:
            q, k = self.rope(q, k, position_ids)
        elif position_ids is not None:
            raise ValueError("position_ids were given but this Attention has no rope to use them")
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            out = (self.kernel or masked_attention)(q, k, v, mask, is_causal, dropout)
        else:
            offset = cache.length
            k, v = cache.append(k, v)
            out = masked_attention(q, k, v, mask, is_causal, dropout, q_offset=offset)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"
