"""Decoding with a key/value cache: the next-token logits of rows that grow a few tokens at a time, each token
computed once.

The model is any causal LM over the batch ``input_ids, document_ids, position_ids`` that writes ``logits`` and
extends a :class:`~polymodal.models.layers.kv_cache.KVCache` found under ``kv_cache`` (the engine's
:class:`~polymodal.models.llm.CausalLM`). Rows of different lengths share a batch: they are left-padded, the
padding is a document of its own (id -1) that no real token attends, and each row's positions count from its first
real token — so every row comes out as if it had been run alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from polymodal.models.layers.kv_cache import KVCache
from polymodal.models.parts import KV_CACHE

PADDING_DOCUMENT = -1


class IncrementalDecoder:
    """:meth:`prefill` the rows once, then :meth:`extend` every row by the same number of tokens per call; both
    return each row's next-token logits ``[B, V]``. ``pad_id`` fills the left padding (any id: it is never
    attended)."""

    def __init__(self, model: nn.Module, pad_id: int = 0) -> None:
        self.model = model
        self.pad_id = pad_id
        self.cache: KVCache | None = None
        self.next_positions: Tensor | None = None

    def prefill(self, rows: Sequence[Tensor], room: int) -> Tensor:
        """Start from ``rows`` (1-D token ids, at least one each, on one device), leaving room for ``room`` more
        tokens per row; the longest row and its room must fit the model's ``max_seq_len`` positions (if it says)."""
        if not len(rows) or min(len(row) for row in rows) == 0:
            raise ValueError("prefill needs at least one row, each of at least one token")
        longest, limit = max(len(row) for row in rows), getattr(self.model, "max_seq_len", None)
        if limit is not None and longest + room > limit:
            raise ValueError(f"a row of {longest} tokens and {room} more exceeds the model's {limit} positions")
        lengths = torch.tensor([len(row) for row in rows], device=rows[0].device)
        tokens = pad_sequence(list(rows), batch_first=True, padding_value=self.pad_id, padding_side="left")
        padding = (tokens.shape[1] - lengths)[:, None]
        columns = torch.arange(tokens.shape[1], device=tokens.device)
        documents = torch.where(columns < padding, PADDING_DOCUMENT, 0)
        self.cache = KVCache(tokens.shape[1] + room)
        self.next_positions = lengths
        return self._next_logits(tokens, documents, (columns - padding).clamp(min=0))

    def extend(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` (``[B, T]``) to the rows."""
        if self.cache is None or self.next_positions is None:
            raise RuntimeError("extend() before prefill()")
        positions = self.next_positions[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
        self.next_positions = self.next_positions + tokens.shape[1]
        return self._next_logits(tokens, torch.zeros_like(tokens), positions)

    def _next_logits(self, tokens: Tensor, documents: Tensor, positions: Tensor) -> Tensor:
        batch = {"input_ids": tokens, "document_ids": documents, "position_ids": positions, KV_CACHE: self.cache}
        return self.model(batch)["logits"][:, -1]
