"""Attentive pooling: learned queries cross-attend a sequence of tokens, as in the attentive probes of AIM and
V-JEPA (CaiT's class-attention). It is the head of an attentive probe on frozen patch features and a model part
of its own (e.g. an AIM classifier head)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.models.layers.cross_attention import CrossAttention
from polymodal.models.layers.init import init_weights
from polymodal.models.layers.norm import LayerNorm
from polymodal.models.meta import DataDict, ReadWriteBlock


class AttentivePooling(nn.Module):
    """``[B, T, D] -> [B, D]``: ``num_queries`` learned queries attend the tokens, layer-normed unless
    ``token_norm=False`` (AIMv2's pooling head attends the tokens as they are); their outputs are averaged.
    ``mask`` (bool ``[B, T]``, True = a real token) hides padding tokens."""

    def __init__(
        self, dim: int, num_heads: int, num_queries: int = 1, qkv_bias: bool = True, token_norm: bool = True
    ) -> None:
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        self.query = nn.Parameter(torch.empty(1, num_queries, dim))
        self.norm = LayerNorm(dim) if token_norm else nn.Identity()
        self.attention = CrossAttention(dim, num_heads, qkv_bias=qkv_bias, out_bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_weights(self)
        with torch.no_grad():
            nn.init.trunc_normal_(self.query, std=0.02, a=-0.04, b=0.04)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.query.shape[-1]:
            raise ValueError(f"tokens must be [B, T, D={self.query.shape[-1]}], got {tuple(tokens.shape)}")
        query = self.query.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        attend = None if mask is None else mask[:, None, None, :]  # [B, heads, queries, T]
        return self.attention(query, self.norm(tokens), attend).mean(dim=1)


class AttentivePoolingHead(ReadWriteBlock):
    """Reads tokens ``[B, T, D]`` (and an optional bool token mask), writes ``[B, out_features]``: attentive pooling,
    then a linear layer. The attentive probe trains one of these on frozen patch features."""

    def __init__(
        self,
        dim: int,
        out_features: int,
        num_heads: int = 1,
        num_queries: int = 1,
        read_key: str = "tokens",
        write_key: str = "logits",
        mask_key: str | None = None,
    ) -> None:
        super().__init__([read_key] + ([mask_key] if mask_key else []), write_key)
        self.mask_key = mask_key
        self.pool = AttentivePooling(dim, num_heads, num_queries)
        self.linear = nn.Linear(dim, out_features)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        self.pool.initialize_weights()
        init_weights(self.linear)

    def forward(self, data: DataDict) -> DataDict:
        mask = data[self.mask_key] if self.mask_key else None
        data[self.write_keys[0]] = self.linear(self.pool(data[self.read_keys[0]], mask))
        return data
