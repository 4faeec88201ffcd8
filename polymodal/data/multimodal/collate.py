"""Collating multimodal samples into a batch: tensors stack, captions and detections stay lists, and a modality a
sample lacks is filled and marked (``<modality>_present``). The loader's default collate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

Sample = dict[str, Any]
Batch = dict[str, Any]
TensorSpec = tuple[tuple[int, ...], torch.dtype]


def _stack_values(key: str, values: list[Any]) -> Any:
    """Tensors stack, Python numbers become a tensor, everything else (str, list, dict, None) stays a list."""
    if all(isinstance(v, torch.Tensor) for v in values):
        shapes = {tuple(v.shape) for v in values}
        dtypes = {v.dtype for v in values}
        if len(shapes) > 1 or len(dtypes) > 1:
            raise ValueError(f"cannot collate {key!r}: samples have shapes {sorted(shapes)} and dtypes {dtypes}")
        return torch.stack(values)
    if all(isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.int64)
    if all(isinstance(v, float) for v in values):
        return torch.tensor(values, dtype=torch.float32)
    return list(values)


def _absent_fill(key: str, present: list[Any], spec: TensorSpec | None) -> Any:
    """The value that stands in for an absent modality: zeros like the present tensors, or None otherwise."""
    if spec is not None:
        shape, dtype = spec
        return torch.zeros(shape, dtype=dtype)
    if present and isinstance(present[0], torch.Tensor):
        return torch.zeros_like(present[0])
    return None


def collate_with_absent(
    samples: Sequence[Sample],
    modalities: Sequence[str],
    specs: Mapping[str, TensorSpec] | None = None,
) -> Batch:
    """Collate samples that may each lack some of ``modalities``; the other keys must be in every sample.

    For each modality ``m`` the batch holds ``m`` and ``m_present`` (bool ``[B]``). A missing tensor modality
    is filled with zeros whose shape/dtype come from ``specs[m]`` (per-sample shape, dtype) if declared, else
    from the samples that have it. Non-tensor values (captions as ``list[str]``, detections as dicts) collate
    as a list with ``None`` for absent samples; so does a modality no sample has and no spec declares.
    """
    if not samples:
        raise ValueError("collate_with_absent got no samples")
    specs = specs or {}
    batch: Batch = {}
    for modality in modalities:
        present_mask = [modality in sample for sample in samples]
        present = [sample[modality] for sample in samples if modality in sample]
        fill = _absent_fill(modality, present, specs.get(modality))
        values = [sample.get(modality, fill) for sample in samples]
        batch[modality] = _stack_values(modality, values)
        batch[f"{modality}_present"] = torch.tensor(present_mask, dtype=torch.bool)
    for key in samples[0]:
        if key in batch:
            continue
        missing = [i for i, sample in enumerate(samples) if key not in sample]
        if missing:
            raise ValueError(
                f"key {key!r} is missing from samples {missing} ; list it in `modalities` if it may be absent"
            )
        batch[key] = _stack_values(key, [sample[key] for sample in samples])
    extra = {key for sample in samples for key in sample} - set(batch)
    if extra:
        raise ValueError(f"keys {sorted(extra)} are in some samples but not the first; list them in `modalities`")
    return batch


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """The default collate of multimodal samples that all have the same keys (``collate_with_absent`` with no
    optional modality): unlike ``default_collate`` it keeps variable-size values (detections, captions) as lists."""
    return collate_with_absent(samples, modalities=())
