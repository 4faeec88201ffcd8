"""Boolean attention-mask builders.

Every mask follows the SDPA convention: ``True`` means the query *may attend* the key. Masks returned
here are ``[T, T]`` or ``[B, 1, T_q, T_k]`` (``[B, 1, 1, T]`` for padding) and broadcast against the
``[B, H, T_q, T_k]`` score tensor inside :class:`~polymodal.models.layers.attention.Attention`.
"""

from __future__ import annotations

from functools import reduce

import torch
from torch import Tensor


def _check_integer_tensor(name: str, tensor: Tensor, ndim: int) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got dtype {tensor.dtype}")


def causal_mask(seq_len: int, device: torch.device | str | None = None) -> Tensor:
    """``[T, T]`` lower-triangular mask: token ``i`` attends tokens ``j <= i``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def prefix_causal_mask(prefix_lengths: Tensor, seq_len: int) -> Tensor:
    """``[B, 1, T, T]`` prefix-LM mask (AIM-style).

    The first ``prefix_lengths[b]`` tokens of sample ``b`` attend each other bidirectionally; every later
    token attends causally (all prefix tokens and the tokens up to itself).
    """
    _check_integer_tensor("prefix_lengths", prefix_lengths, ndim=1)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if prefix_lengths.numel() and (prefix_lengths.min() < 0 or prefix_lengths.max() > seq_len):
        raise ValueError(f"prefix_lengths must lie in [0, seq_len={seq_len}], got {prefix_lengths.tolist()}")
    positions = torch.arange(seq_len, device=prefix_lengths.device)
    key_in_prefix = positions[None, None, :] < prefix_lengths[:, None, None]
    mask = causal_mask(seq_len, prefix_lengths.device)[None] | key_in_prefix
    return mask.unsqueeze(1)


def document_mask(document_ids: Tensor, causal: bool = True) -> Tensor:
    """``[B, 1, T, T]`` block-diagonal mask for packed sequences.

    Token ``i`` may attend token ``j`` only when both carry the same document id (and ``j <= i`` when
    ``causal``).
    """
    _check_integer_tensor("document_ids", document_ids, ndim=2)
    mask = document_ids[:, :, None] == document_ids[:, None, :]
    if causal:
        mask = mask & causal_mask(document_ids.shape[1], document_ids.device)
    return mask.unsqueeze(1)


def padding_mask(valid: Tensor) -> Tensor:
    """``[B, 1, 1, T]`` mask that forbids attending padding *keys* (``valid[b, t]`` False).

    Rows of padded *queries* are left as they are. A query row with no key left to attend (e.g. a
    sample made only of padding, or left padding combined with a causal mask) is handled by
    ``Attention``, which then lets that query attend itself so its output stays finite.
    """
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got dtype {valid.dtype}")
    if valid.dim() != 2:
        raise ValueError(f"valid must be [B, T], got shape {tuple(valid.shape)}")
    return valid[:, None, None, :]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of boolean masks with broadcasting; ``None`` entries are skipped.

    Returns ``None`` when every entry is ``None`` (no masking at all).
    """
    present = [mask for mask in masks if mask is not None]
    for index, mask in enumerate(present):
        if mask.dtype != torch.bool:
            raise ValueError(f"mask #{index} must be a bool tensor, got dtype {mask.dtype}")
    if not present:
        return None
    try:
        torch.broadcast_shapes(*(mask.shape for mask in present))
    except RuntimeError as error:
        shapes = [tuple(mask.shape) for mask in present]
        raise ValueError(f"masks with shapes {shapes} do not broadcast together") from error
    return reduce(torch.logical_and, present)
