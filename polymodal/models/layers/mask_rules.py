"""Attention masks as values that say what they are, so attention can take the fastest kernel each one allows.

* :class:`CausalMask` — every row of the batch is one causal sequence. No mask tensor exists: SDPA runs with
  ``is_causal`` (the flash kernel on a GPU). The value carries the causality itself, so a trunk configured
  without ``is_causal`` still attends causally.
* a :class:`MaskRule` — a mask given by a rule over (sample, query, key) positions: document-causal, prefix-causal,
  and the 4M family's decoder mask. :func:`resolve_mask` turns it into the dense ``[B, 1, T, T]`` bool mask (the
  reference path, built by :mod:`polymodal.models.layers.masks`) or, with ``attention="flex"``, into a
  FlexAttention ``BlockMask`` of 128-token blocks.
* a bool tensor (``True`` = may attend) or ``None``, as before.

What each costs in memory and which GPU kernel it gets: ``docs/attention.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, and_masks, create_block_mask

from polymodal.models.layers.masks import document_mask, prefix_causal_mask

AttentionImpl = Literal["sdpa", "flex"]
ATTENTION_IMPLS: tuple[AttentionImpl, ...] = ("sdpa", "flex")

FLEX_BLOCK_SIZE = 128  # FlexAttention's default block (tokens per side of one block of the block mask)

MaskMod: TypeAlias = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (sample, head, query, key) -> may attend


@dataclass(frozen=True)
class CausalMask:
    """Every query attends the keys at or before its own position (one causal sequence per row)."""


class MaskRule(ABC):
    """A ``[B, 1, T, T]`` mask given by a rule. ``dense`` builds the bool tensor (the reference), ``mask_mod`` is
    the same rule as FlexAttention evaluates it; neither ever leaves a query row empty."""

    batch_size: int
    seq_len: int
    device: torch.device

    @abstractmethod
    def dense(self) -> Tensor:
        """The ``[B, 1, T, T]`` bool mask (``True`` = may attend)."""

    @abstractmethod
    def mask_mod(self) -> MaskMod:
        """``(sample, head, query, key) -> bool`` on index tensors, as ``create_block_mask`` calls it."""


@dataclass(frozen=True, eq=False)
class DocumentCausalRule(MaskRule):
    """Packed documents: a token attends the earlier tokens of its own document (``document_ids`` int ``[B, T]``)."""

    document_ids: Tensor

    @property
    def batch_size(self) -> int:
        return self.document_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.document_ids.shape[1]

    @property
    def device(self) -> torch.device:
        return self.document_ids.device

    def dense(self) -> Tensor:
        return document_mask(self.document_ids, causal=True)

    def mask_mod(self) -> MaskMod:
        documents = self.document_ids

        def document_causal(sample: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
            return (documents[sample, query] == documents[sample, key]) & (key <= query)

        return document_causal


@dataclass(frozen=True, eq=False)
class PrefixCausalRule(MaskRule):
    """AIM's prefix-LM mask: a key in sample ``b``'s first ``prefix_lengths[b]`` positions is seen by every query,
    a later key by the queries at or after it."""

    prefix_lengths: Tensor
    seq_len: int

    @property
    def batch_size(self) -> int:
        return self.prefix_lengths.shape[0]

    @property
    def device(self) -> torch.device:
        return self.prefix_lengths.device

    def dense(self) -> Tensor:
        return prefix_causal_mask(self.prefix_lengths, self.seq_len)

    def mask_mod(self) -> MaskMod:
        prefix = self.prefix_lengths

        def prefix_causal(sample: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
            return (key <= query) | (key < prefix[sample])

        return prefix_causal


def one_document_per_row(document_ids: Tensor) -> bool:
    """Whether every row holds a single document id. One host sync of one bool per batch (on a GPU it waits for
    the work queued before it, a few microseconds at the start of a step: ``docs/attention.md``)."""
    return bool((document_ids == document_ids[:, :1]).all())


def _causal(sample: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
    return key <= query


def flex_block_mask(rule: MaskRule, is_causal: bool = False) -> BlockMask:
    """The FlexAttention block mask of ``rule`` (AND-ed with the causal mask when ``is_causal``), one per sample
    and shared by all heads."""
    mask_mod = and_masks(rule.mask_mod(), _causal) if is_causal else rule.mask_mod()
    size = rule.seq_len
    return create_block_mask(
        mask_mod, rule.batch_size, None, size, size, device=rule.device, BLOCK_SIZE=FLEX_BLOCK_SIZE
    )


AttentionMask: TypeAlias = Tensor | CausalMask | BlockMask | None


def check_attention_impl(attention: str) -> AttentionImpl:
    """``attention`` if it names a kernel rule masks can run on (:data:`ATTENTION_IMPLS`), else a clear error."""
    if attention not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")
    return cast(AttentionImpl, attention)


def resolve_mask(
    mask: Tensor | CausalMask | MaskRule | None, attention: AttentionImpl, is_causal: bool
) -> tuple[AttentionMask, bool]:
    """The mask and ``is_causal`` a transformer's blocks get, built once per forward pass: a rule becomes a
    FlexAttention block mask (``attention="flex"``, ``is_causal`` folded into it) or its dense bool mask
    (``"sdpa"``); anything else is passed on as it is."""
    check_attention_impl(attention)
    if not isinstance(mask, MaskRule):
        return mask, is_causal
    if attention == "flex":
        return flex_block_mask(mask, is_causal), False
    return mask.dense(), is_causal
