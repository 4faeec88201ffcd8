"""Generic data_dict parts shared by model families: a transformer trunk, attention-mask builders (document-causal,
prefix-causal), token sequences joined and cut along positions, a linear head and the vocabulary head of language
models.

A batch may carry a :class:`~polymodal.models.layers.kv_cache.KVCache` under ``kv_cache`` (decoding: see
:mod:`polymodal.models.decoding`); the mask and the trunk then extend it. It is an optional read: training batches
do not hold it, and without it nothing changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polymodal.models.layers.block import Transformer
from polymodal.models.layers.mask_rules import (
    AttentionImpl,
    CausalMask,
    DocumentCausalRule,
    PrefixCausalRule,
    check_attention_impl,
    one_document_per_row,
    resolve_mask,
)
from polymodal.models.meta import DataDict, ReadWriteBlock
from polymodal.models.token_loss import chunked_token_loss

KV_CACHE = "kv_cache"


def _optional(data: DataDict, key: str | None) -> Any:
    return data[key] if key is not None and key in data else None


class DocumentCausalMask(ReadWriteBlock):
    """Writes a causal, block-diagonal mask: a token attends earlier tokens of its own document only.

    When every row holds one document it writes a :class:`~polymodal.models.layers.mask_rules.CausalMask` (no mask
    tensor: SDPA's ``is_causal``), else a :class:`~polymodal.models.layers.mask_rules.DocumentCausalRule` that the
    trunk turns into a dense or a FlexAttention block mask. With a cache (decoding) it writes the dense mask over
    the earlier tokens of each document, cached or new."""

    def __init__(self, read_key: str = "document_ids", write_key: str = "attn_mask", cache_key: str | None = KV_CACHE):
        super().__init__([read_key] + ([cache_key] if cache_key else []), write_key)
        self.cache_key = cache_key

    def forward(self, data: DataDict) -> DataDict:
        documents, cache = data[self.read_keys[0]], _optional(data, self.cache_key)
        if cache is not None:
            data[self.write_keys[0]] = cache.extend_mask(documents)
        elif one_document_per_row(documents):
            data[self.write_keys[0]] = CausalMask()
        else:
            data[self.write_keys[0]] = DocumentCausalRule(documents)
        return data


class PrefixCausalMask(ReadWriteBlock):
    """Writes the prefix-LM mask of AIM: ``causal OR key-in-prefix``, as a
    :class:`~polymodal.models.layers.mask_rules.PrefixCausalRule` (the trunk builds its ``[B, 1, T, T]`` bool mask
    or its FlexAttention block mask).

    Sample ``b``'s first ``prefix_lengths[b]`` patches attend each other bidirectionally; every later patch attends
    the whole prefix and causally the patches up to itself. ``prefix_lengths`` (int ``[B]``, in ``[0, N]``) count
    patches. Extra tokens in front of the patches (the CLS and registers of a
    :class:`~polymodal.models.vit.ViTPreprocessor`, their number read from ``extra_tokens_key``) join the prefix:
    every token attends them, and they attend the prefix patches but never a later patch, so nothing leaks from
    the patches a prediction is scored on. A prefix of N patches is the fully bidirectional mask.

    ``T`` comes from the tokens under ``tokens_key``; ``extra_tokens_key=None`` means there are no extra tokens.
    """

    def __init__(
        self,
        tokens_key: str = "tokens",
        prefix_key: str = "prefix_lengths",
        extra_tokens_key: str | None = "num_extra_tokens",
        write_key: str = "attn_mask",
    ):
        super().__init__([tokens_key, prefix_key] + ([extra_tokens_key] if extra_tokens_key else []), write_key)
        self.extra_tokens_key = extra_tokens_key

    def forward(self, data: DataDict) -> DataDict:
        tokens, prefix_lengths = data[self.read_keys[0]], data[self.read_keys[1]]
        extra = int(data[self.extra_tokens_key]) if self.extra_tokens_key else 0
        batch, seq_len = tokens.shape[:2]
        if tuple(prefix_lengths.shape) != (batch,):
            raise ValueError(f"prefix_lengths must be [B={batch}], got shape {tuple(prefix_lengths.shape)}")
        num_patches = seq_len - extra
        if prefix_lengths.numel() and (prefix_lengths.min() < 0 or prefix_lengths.max() > num_patches):
            raise ValueError(f"prefix_lengths must lie in [0, N={num_patches}], got {prefix_lengths.tolist()}")
        data[self.write_keys[0]] = PrefixCausalRule(prefix_lengths.to(tokens.device) + extra, seq_len)
        return data


class TransformerTrunk(ReadWriteBlock):
    """Runs a :class:`Transformer` on ``hidden`` with an optional mask and position ids read from the dict.

    ``attention`` picks the kernel of rule masks (:mod:`polymodal.models.layers.mask_rules`): ``"sdpa"`` builds the
    dense bool mask once per forward pass, ``"flex"`` a FlexAttention block mask (fused on a GPU; on the CPU
    forward-only and slow). A :class:`~polymodal.models.layers.mask_rules.CausalMask` or no mask runs SDPA either
    way. A transformer with mixture-of-experts blocks also writes its per-layer router statistics under
    ``moe_stats_key`` (read by :class:`~polymodal.objectives.moe.MoEAuxLoss`)."""

    def __init__(
        self,
        transformer: Transformer,
        read_key: str = "hidden",
        write_key: str = "hidden",
        mask_key: str | None = "attn_mask",
        position_key: str | None = "position_ids",
        is_causal: bool = False,
        cache_key: str | None = KV_CACHE,
        attention: AttentionImpl = "sdpa",
        moe_stats_key: str = "moe_stats",
    ):
        reads = [read_key] + [key for key in (mask_key, position_key, cache_key) if key is not None]
        super().__init__(reads, [write_key, moe_stats_key] if transformer.has_moe else write_key)
        self.transformer = transformer
        self.mask_key, self.position_key, self.is_causal = mask_key, position_key, is_causal
        self.cache_key = cache_key
        self.attention = check_attention_impl(attention)

    @property
    def depth(self) -> int:
        return len(self.transformer.blocks)

    def forward(self, data: DataDict) -> DataDict:
        mask, is_causal = resolve_mask(data[self.mask_key] if self.mask_key else None, self.attention, self.is_causal)
        positions = data[self.position_key] if self.position_key else None
        cache = _optional(data, self.cache_key)
        out = self.transformer(data[self.read_keys[0]], mask, is_causal, positions, cache)
        if self.transformer.has_moe:
            out, data[self.write_keys[1]] = out
        data[self.write_keys[0]] = out
        return data

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}, attention={self.attention!r}"


class ConcatenateTokens(ReadWriteBlock):
    """``[B, T_1, D], [B, T_2, D], ... -> [B, T_1 + T_2 + ..., D]``: token sequences joined along the positions, in
    the order of ``read_keys`` (e.g. AIMv2's decoder input, image tokens then text tokens)."""

    def __init__(self, read_keys: list[str], write_key: str):
        if len(read_keys) < 2:
            raise ValueError(f"ConcatenateTokens needs at least two read keys, got {read_keys}")
        super().__init__(read_keys, write_key)

    def forward(self, data: DataDict) -> DataDict:
        sequences = [data[key] for key in self.read_keys]
        batch, width = sequences[0].shape[0], sequences[0].shape[-1]
        for key, tokens in zip(self.read_keys, sequences, strict=True):
            if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[-1] != width:
                raise ValueError(f"'{key}' must be [B={batch}, T, D={width}] tokens, got {tuple(tokens.shape)}")
        data[self.write_keys[0]] = torch.cat(sequences, dim=1)
        return data


class SliceTokens(ReadWriteBlock):
    """``[B, T, ...] -> [B, stop - start, ...]``: positions ``start .. stop - 1`` (Python slice bounds: ``stop=None``
    runs to the end, a negative ``stop`` counts from it), e.g. the image and the text part of a joint sequence."""

    def __init__(self, read_key: str, write_key: str, start: int = 0, stop: int | None = None):
        super().__init__(read_key, write_key)
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start, self.stop = start, stop

    def forward(self, data: DataDict) -> DataDict:
        tokens = data[self.read_keys[0]]
        length = len(range(tokens.shape[1])[self.start : self.stop])
        if length == 0:
            raise ValueError(
                f"'{self.read_keys[0]}' has {tokens.shape[1]} positions: slice [{self.start}:{self.stop}] is empty"
            )
        data[self.write_keys[0]] = tokens[:, self.start : self.stop]
        return data

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"


class LinearHead(ReadWriteBlock):
    """A linear projection of one key into another (e.g. hidden states → vocabulary logits)."""

    def __init__(self, dim: int, out_dim: int, read_key: str = "hidden", write_key: str = "logits", bias: bool = False):
        super().__init__(read_key, write_key)
        self.proj = nn.Linear(dim, out_dim, bias=bias)

    def forward(self, data: DataDict) -> DataDict:
        data[self.write_keys[0]] = self.proj(data[self.read_keys[0]])
        return data


class VocabularyHead(LinearHead):
    """The projection to the vocabulary of a language model, which can compute the next-token loss itself.

    With ``loss_chunk_size`` set and targets in the batch it writes the loss sums of
    :func:`~polymodal.models.token_loss.chunked_token_loss` (labelled positions only, ``loss_chunk_size`` of them
    at a time) under ``loss_key`` instead of the logits, which then never exist for the whole batch. The loss is
    computed here, inside this module's forward, because that is where FSDP2 has the weight gathered.
    ``NextTokenLoss`` reads the sums. Without targets (generation), or with ``loss_chunk_size=None`` (a metric
    that wants the logits; tensor parallelism, which shards the weight, sets it), it writes the logits.
    ``loss_z_loss_weight``: the z-loss weight of the objective that reads the sums (``NextTokenLoss``); given it, the
    loss's gradients are computed during this forward pass and backward only scales them, one matmul fewer (see
    :mod:`polymodal.models.token_loss`; an objective that weighs the sums otherwise still gets exact gradients).
    """

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        bias: bool = False,
        loss_chunk_size: int | None = 1024,
        ignore_index: int = -100,
        read_key: str = "hidden",
        target_key: str = "target_ids",
        write_key: str = "logits",
        loss_key: str = "token_loss",
        loss_z_loss_weight: float | None = None,
    ):
        super().__init__(dim, vocab_size, read_key, write_key, bias)
        if loss_chunk_size is not None and loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1 or None, got {loss_chunk_size}")
        self.read_keys = (read_key, target_key)
        self.write_keys = (write_key, loss_key)
        self.loss_chunk_size = loss_chunk_size
        self.ignore_index = ignore_index
        self.loss_z_loss_weight = loss_z_loss_weight

    def forward(self, data: DataDict) -> DataDict:
        hidden_key, target_key = self.read_keys
        logits_key, loss_key = self.write_keys
        if self.loss_chunk_size is None or target_key not in data:
            data[logits_key] = self.proj(data[hidden_key])
            return data
        data[loss_key] = chunked_token_loss(
            data[hidden_key],
            self.proj.weight,
            self.proj.bias,
            data[target_key],
            self.loss_chunk_size,
            self.ignore_index,
            self.loss_z_loss_weight,
        )
        return data
