"""Mixing several map-style datasets by weight, and collating batches whose samples lack some modalities.

:class:`MixedDataset` is itself map-style, so the resumable loader shuffles and shards it like any other
dataset. Sample ``j`` comes from the source drawn for ``j`` by ``numpy.random.default_rng(seed)`` with the
normalised weights (one vectorised draw for all ``j``, so it is a pure function of ``(seed, j)`` for a fixed
length). The ``c``-th sample drawn from a source is element ``c mod len(source)`` of that source's own
permutation ``default_rng([seed, source_index]).permutation(len(source))``, so a source is covered without
repetition before any of its samples repeats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from polymodal.data.multimodal.loader import MapDataset, Sample

Batch = dict[str, Any]
TensorSpec = tuple[tuple[int, ...], torch.dtype]


class MixedDataset:
    """``sources`` mixed by ``weights``; every sample gets a ``"source"`` entry naming where it came from."""

    def __init__(
        self,
        datasets: Mapping[str, MapDataset],
        weights: Mapping[str, float],
        seed: int,
        num_samples: int | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        if set(datasets) != set(weights):
            raise ValueError(f"weights name {sorted(weights)} but the datasets are {sorted(datasets)}")
        for name, weight in weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of dataset {name!r} must be finite and >= 0, got {weight}")
        for name, dataset in datasets.items():
            if weights[name] > 0 and len(dataset) == 0:
                raise ValueError(f"dataset {name!r} has weight {weights[name]} but no samples")
        total_weight = sum(weights.values())
        if total_weight <= 0:
            raise ValueError(f"the weights must not all be zero, got {dict(weights)}")
        self.names = list(datasets)
        self.datasets = [datasets[name] for name in self.names]
        self.probabilities = np.array([weights[name] / total_weight for name in self.names])
        self.num_samples = sum(len(d) for d in self.datasets) if num_samples is None else num_samples
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        rng = np.random.default_rng(seed)
        self._source_of = rng.choice(len(self.names), size=self.num_samples, p=self.probabilities)
        self._draw_in_source = np.empty(self.num_samples, dtype=np.int64)
        for source in range(len(self.names)):
            picked = self._source_of == source
            self._draw_in_source[picked] = np.arange(int(picked.sum()))
        self._permutations = [
            np.random.default_rng([seed, source]).permutation(len(dataset))
            for source, dataset in enumerate(self.datasets)
        ]

    def __len__(self) -> int:
        return self.num_samples

    def _locate(self, sample_id: int) -> tuple[int, int]:
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(f"sample_id {sample_id} out of range for a MixedDataset of {self.num_samples} samples")
        source = int(self._source_of[sample_id])
        permutation = self._permutations[source]
        return source, int(permutation[self._draw_in_source[sample_id] % len(permutation)])

    def locate(self, sample_id: int) -> tuple[str, int]:
        """The source name and the index within that source of mixed sample ``sample_id``."""
        source, index = self._locate(sample_id)
        return self.names[source], index

    def __getitem__(self, sample_id: int) -> Sample:
        source, index = self._locate(sample_id)
        sample = dict(self.datasets[source][index])
        sample["source"] = self.names[source]
        return sample


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
