"""Key/value caches for decoding: each token's keys and values are computed once and kept for every later step.

A :class:`KVCache` serves one batch of rows through one model: a :class:`LayerCache` per attention layer (made on
first use) and the document id of every cached position, from which the attention mask of the next tokens is made.
Rows advance together, a few tokens at a time; rows of different lengths are left-padded, the padding being a
document of its own (see :class:`polymodal.models.decoding.IncrementalDecoder`).
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """One attention layer's keys and values (``[B, Hkv, capacity, head_dim]``, allocated on the first append),
    filled from the left."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the keys and values of the next tokens (``[B, Hkv, T, head_dim]``); returns all of them so far."""
        end = self.length + keys.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the key/value cache holds {self.capacity} positions; {end} were asked for")
        if self.keys is None or self.values is None:
            shape = (*keys.shape[:2], self.capacity, keys.shape[-1])
            self.keys, self.values = keys.new_empty(shape), values.new_empty(shape)
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Every attention layer's :class:`LayerCache` and the document ids of the cached positions, for up to
    ``capacity`` positions per row."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.layers: list[LayerCache] = []
        self.document_ids: Tensor | None = None

    @property
    def length(self) -> int:
        """Positions of each row seen so far (padding included)."""
        return 0 if self.document_ids is None else self.document_ids.shape[1]

    def layer(self, index: int) -> LayerCache:
        while len(self.layers) <= index:
            self.layers.append(LayerCache(self.capacity))
        return self.layers[index]

    def extend_mask(self, document_ids: Tensor) -> Tensor:
        """Record the document ids (``[B, T]``) of the next tokens and return their attention mask over every
        position, cached and new (``[B, 1, T, length + T]``): a token attends the earlier tokens of its document."""
        keys = document_ids if self.document_ids is None else torch.cat([self.document_ids, document_ids], dim=1)
        if keys.shape[1] > self.capacity:
            raise ValueError(f"the key/value cache holds {self.capacity} positions; {keys.shape[1]} were asked for")
        new, total = document_ids.shape[1], keys.shape[1]
        causal = torch.ones(new, total, dtype=torch.bool, device=keys.device).tril(diagonal=total - new)
        self.document_ids = keys
        return ((document_ids[:, :, None] == keys[:, None, :]) & causal).unsqueeze(1)
