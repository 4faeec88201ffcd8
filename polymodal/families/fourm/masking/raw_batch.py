"""The raw batch 4M masking takes, checked and parsed per modality.

Raw batch in (a dict keyed by registry modality names):

* image tokens (``img`` with a vocabulary): int (B, N) codes, N = ``spec.num_positions()`` ((B, h, w) is flattened);
* pixels (``img`` without vocabulary, e.g. ``rgb@64``): float (B, C, H, W); masking picks its N patches and the
  tensor passes through unchanged;
* ``seq`` / ``seq_token``: int (B, T) ids, T <= ``max_tokens``, right-padded with PAD = 0 (ids are never 0
  otherwise), already ending in EOS where that applies; both kinds are masked the same way;
* ``seq_emb``: float (B, T, E) with ``<name>_length`` (B,) int (default: every row full);
* optional ``<name>_present``: (B,) bool. False: the sample lacks the modality; it gets no input and no target
  budget, and its share goes to the other modalities. A sequence with no tokens counts as absent too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.tokenizers.text.wordpiece import PAD_ID

PRESENT_SUFFIX = "_present"
LENGTH_SUFFIX = "_length"


@dataclass(frozen=True)
class RawModality:
    """One modality of a checked raw batch."""

    spec: ModalitySpec
    values: torch.Tensor  # image codes (B, N) int64 | pixels (B, C, H, W) | ids (B, T) int64 | embeddings (B, T, E)
    present: torch.Tensor  # (B,) bool
    valid: torch.Tensor | None  # sequences: (B, T) bool, True at real (non-padding) tokens


def parse_raw_batch(
    modalities: Mapping[str, ModalitySpec], raw_batch: Mapping[str, torch.Tensor]
) -> dict[str, RawModality]:
    """Check ``raw_batch`` against the registry and the contract of the module docstring.

    Returns the modalities it holds, in registry order. Raises ValueError naming the offending key.
    """
    names = [name for name in modalities if name in raw_batch]
    extras = {name + suffix for name in names for suffix in (PRESENT_SUFFIX, LENGTH_SUFFIX)}
    unknown = sorted(key for key in raw_batch if key not in modalities and key not in extras)
    if unknown:
        raise ValueError(
            f"raw batch has unknown key(s) {unknown}; expected registry modalities {list(modalities)} "
            f"(and '<name>{PRESENT_SUFFIX}' / '<name>{LENGTH_SUFFIX}' for those present)"
        )
    if not names:
        raise ValueError(f"raw batch holds none of the registry modalities {list(modalities)}")
    first = _tensor(raw_batch, names[0])
    if first.dim() == 0:
        raise ValueError(f"raw batch {names[0]!r} is a scalar; expected a batch dimension first")
    batch_size = first.shape[0]
    return {name: _parse_modality(modalities[name], raw_batch, batch_size) for name in names}


def _tensor(raw_batch: Mapping[str, object], key: str) -> torch.Tensor:
    value = raw_batch[key]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"raw batch {key!r} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _is_integer(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def _parse_modality(spec: ModalitySpec, raw_batch: Mapping[str, torch.Tensor], batch_size: int) -> RawModality:
    name = spec.name
    values = _tensor(raw_batch, name)
    if values.dim() == 0 or values.shape[0] != batch_size:
        raise ValueError(f"raw batch {name!r} has shape {tuple(values.shape)}, expected batch size {batch_size} first")
    present = torch.ones(batch_size, dtype=torch.bool, device=values.device)
    if name + PRESENT_SUFFIX in raw_batch:
        present = _tensor(raw_batch, name + PRESENT_SUFFIX)
        if present.dtype != torch.bool or tuple(present.shape) != (batch_size,):
            raise ValueError(
                f"{name + PRESENT_SUFFIX!r} must be a ({batch_size},) bool tensor, got {present.dtype} "
                f"{tuple(present.shape)}"
            )
    if name + LENGTH_SUFFIX in raw_batch and spec.kind != "seq_emb":
        raise ValueError(
            f"{name + LENGTH_SUFFIX!r}: only seq_emb modalities take a length; {spec.kind} lengths come "
            f"from the PAD ({PAD_ID}) padding"
        )
    if spec.is_pixels:
        expected = (batch_size, spec.num_channels, spec.resolution, spec.resolution)
        if not values.is_floating_point() or tuple(values.shape) != expected:
            raise ValueError(
                f"raw batch {name!r} (pixels) must be float {expected}, got {values.dtype} {tuple(values.shape)}"
            )
        return RawModality(spec, values, present, None)
    if spec.is_image:
        positions = spec.num_positions()
        if values.dim() == 3 and tuple(values.shape[1:]) == spec.grid:
            values = values.flatten(1)
        if not _is_integer(values) or tuple(values.shape) != (batch_size, positions):
            raise ValueError(
                f"raw batch {name!r} (image tokens) must be integer ({batch_size}, {positions}) or "
                f"({batch_size}, {spec.grid[0]}, {spec.grid[1]}), got {values.dtype} {tuple(raw_batch[name].shape)}"
            )
        _check_ids(name, values, spec.vocab_size)
        return RawModality(spec, values.long(), present, None)
    if spec.kind == "seq_emb":
        if not values.is_floating_point() or values.dim() != 3 or values.shape[2] != spec.embedding_dim:
            raise ValueError(
                f"raw batch {name!r} (seq_emb) must be float (B, T, {spec.embedding_dim}), got "
                f"{values.dtype} {tuple(values.shape)}"
            )
        _check_length(name, values.shape[1], spec.max_tokens)
        lengths = torch.full((batch_size,), values.shape[1], dtype=torch.long, device=values.device)
        if name + LENGTH_SUFFIX in raw_batch:
            lengths = _tensor(raw_batch, name + LENGTH_SUFFIX)
            if not _is_integer(lengths) or tuple(lengths.shape) != (batch_size,):
                raise ValueError(f"{name + LENGTH_SUFFIX!r} must be an integer ({batch_size},) tensor")
            if ((lengths < 0) | (lengths > values.shape[1])).any():
                raise ValueError(f"{name + LENGTH_SUFFIX!r} must lie in 0..{values.shape[1]}, got {lengths.tolist()}")
        valid = torch.arange(values.shape[1], device=values.device) < lengths[:, None]
        return RawModality(spec, values, present & valid.any(1), valid)
    if not _is_integer(values) or values.dim() != 2:
        raise ValueError(
            f"raw batch {name!r} ({spec.kind}) must be integer (B, T) token ids, got {values.dtype} "
            f"{tuple(values.shape)}"
        )
    _check_length(name, values.shape[1], spec.max_tokens)
    _check_ids(name, values, spec.vocab_size)
    valid = values != PAD_ID
    if (valid[:, 1:] & ~valid[:, :-1]).any():
        rows = torch.nonzero((valid[:, 1:] & ~valid[:, :-1]).any(1)).flatten().tolist()
        raise ValueError(f"raw batch {name!r}: rows {rows} have a token after PAD ({PAD_ID}); pad on the right only")
    return RawModality(spec, values.long(), present & valid.any(1), valid)


def _check_length(name: str, length: int, max_tokens: int) -> None:
    if length > max_tokens:
        raise ValueError(
            f"raw batch {name!r} has {length} tokens per row, more than its max_tokens {max_tokens}; "
            "truncate it in the data pipeline"
        )


def _check_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"raw batch {name!r}: ids must lie in 0..{vocab_size - 1}, got {ids.min()}..{ids.max()}")
