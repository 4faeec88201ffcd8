"""Mixing several map-style datasets by weight (their batches collate with
:func:`~polymodal.data.multimodal.collate.collate_with_absent`).

:class:`MixedDataset` is itself map-style, so the resumable loader shuffles and shards it like any other
dataset. Sample ``j`` comes from the source drawn for ``j`` by ``numpy.random.default_rng(seed)`` with the
normalised weights (one vectorised draw for all ``j``, so it is a pure function of ``(seed, j)`` for a fixed
length). The ``c``-th sample drawn from a source is element ``c mod len(source)`` of that source's own
permutation ``default_rng([seed, source_index]).permutation(len(source))``, so a source is covered without
repetition before any of its samples repeats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from polymodal.data.multimodal.loader import MapDataset, Sample


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
