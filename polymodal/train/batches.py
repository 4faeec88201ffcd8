"""Batches as the training loop handles them: moved to the device, and counted in samples."""

from __future__ import annotations

import torch

from polymodal.models.meta import DataDict


def move_to_device(batch: DataDict, device: torch.device) -> DataDict:
    """The batch with every tensor on ``device``, also inside nested dicts (4M's ``{modality: {...}}``)."""
    return {
        k: v.to(device, non_blocking=True)
        if isinstance(v, torch.Tensor)
        else move_to_device(v, device)
        if isinstance(v, dict)
        else v
        for k, v in batch.items()
    }


def batch_size(batch: DataDict) -> int:
    """Samples in a batch: the leading size of a top-level tensor, else of the first nested dict's (4M's
    ``{modality: {"tensor", ...}}`` without a ``sample_id``)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    for value in batch.values():
        if isinstance(value, dict):
            return batch_size(value)
    raise ValueError(f"the batch holds no tensor to count samples from (keys: {sorted(batch)})")
