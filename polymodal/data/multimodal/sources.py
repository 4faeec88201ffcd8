"""What the trainer's multimodal data objects share: the sources of a split, validation batches, skip counts, info.

A split is one location or a mixture ``{name: location}``; a mixture is sampled by :class:`MixedDataset` with
``weights`` by source name (default: proportional to the sources' sizes). Subclasses say how a location is
opened and which wanted modalities a set of opened sources leaves out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from polymodal.data.multimodal.loader import Batch, BatchTransform, MapDataset, ResumableLoader, Sample, SampleTransform
from polymodal.data.multimodal.mixing import MixedDataset
from polymodal.data.multimodal.shards import MultimodalShards


class SourcedData(ABC):
    """Base of :class:`~polymodal.data.multimodal.data_module.MultimodalData` and
    :class:`~polymodal.families.fourm.data.FourMData`: holds the loader and shard settings both take, opens the splits
    into ``train`` and ``_val`` loaders and keeps every opened :class:`MultimodalShards` in ``_shards`` (their
    truncated tars are counted as skips)."""

    train: ResumableLoader
    _val: ResumableLoader | None

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        error_budget: int,
        cache_dir: str | None,
        storage_options: Mapping[str, Any] | None,
        seed: int,
        dp_rank: int,
        dp_world: int,
    ) -> None:
        self._batch_size = batch_size
        self._num_workers = num_workers
        self._error_budget = error_budget
        self._cache_dir = cache_dir
        self._storage_options = dict(storage_options or {})
        self._seed = seed
        self._dp_rank = dp_rank
        self._dp_world = dp_world
        self._shards: list[MultimodalShards] = []

    @abstractmethod
    def _open_source(self, name: str, location: str, split: str) -> MapDataset:
        """One source of ``split`` named ``name``."""

    @abstractmethod
    def _missing_modalities(self, sources: Mapping[str, MapDataset]) -> list[str]:
        """The wanted modalities none of ``sources`` provides."""

    def _open(
        self, locations: str | Mapping[str, str], split: str, weights: Mapping[str, float] | None
    ) -> tuple[dict[str, MapDataset], MapDataset]:
        """The sources of one split and the dataset the loader reads (the single source, or their mixture)."""
        if isinstance(locations, Mapping):
            if not locations:
                raise ValueError(f"the {split} mixture names no sources")
            sources = {name: self._open_source(name, location, split) for name, location in locations.items()}
        else:
            sources = {split: self._open_source(split, locations, split)}
        missing = self._missing_modalities(sources)
        if missing:
            raise ValueError(f"modalities {missing} are in none of the {split} sources {list(sources)}")
        if not isinstance(locations, Mapping):
            return sources, sources[split]
        if weights is None:
            mixture_weights = {name: float(len(source)) for name, source in sources.items()}
        else:
            mixture_weights = {name: float(w) for name, w in weights.items()}
        return sources, MixedDataset(sources, mixture_weights, self._seed)

    def _open_shards(self, pattern: str, folders: list[str]) -> MultimodalShards:
        """The ``folders`` of a shard pattern, kept so that their truncated tars are counted as skips."""
        shards = MultimodalShards(
            pattern,
            modalities=folders,
            cache_dir=self._cache_dir,
            error_budget=self._error_budget,
            storage_options=self._storage_options,
        )
        self._shards.append(shards)
        return shards

    def _open_splits(
        self,
        train: str | Mapping[str, str],
        val: str | Mapping[str, str] | None,
        weights: Mapping[str, float] | None,
        collate: Callable[[list[Sample]], Batch],
        train_transform: SampleTransform,
        eval_transform: SampleTransform,
        batch_transform: BatchTransform | None = None,
        eval_batch_transform: BatchTransform | None = None,
        **loader_options: Any,
    ) -> None:
        """Sets ``train_sources``, ``train_dataset``, the ``train`` loader and the unshuffled ``_val`` loader (None
        without ``val``); the ``train`` loader runs ``batch_transform``, the ``_val`` loader ``eval_batch_transform``;
        ``loader_options`` go to both loaders."""
        self.train_sources, self.train_dataset = self._open(train, "train", weights)
        train_options = {**loader_options, "batch_transform": batch_transform}
        self.train = self._loader(self.train_dataset, collate, train_transform, shuffle=True, **train_options)
        self._val = None
        if val is not None:
            _, val_dataset = self._open(val, "val", weights)
            val_options = {**loader_options, "batch_transform": eval_batch_transform}
            self._val = self._loader(val_dataset, collate, eval_transform, shuffle=False, **val_options)

    def _loader(
        self,
        dataset: MapDataset,
        collate: Callable[[list[Sample]], Batch],
        transform: SampleTransform,
        shuffle: bool,
        **loader_options: Any,
    ) -> ResumableLoader:
        return ResumableLoader(
            dataset,
            batch_size=self._batch_size,
            seed=self._seed,
            dp_rank=self._dp_rank,
            dp_world=self._dp_world,
            num_workers=self._num_workers,
            collate=collate,
            transform=transform,
            error_budget=self._error_budget,
            shuffle=shuffle,
            **loader_options,
        )

    def val_batches(self, max_batches: int | None) -> Iterator[Batch]:
        """Deterministic validation batches: ids in order, evaluation transform, the same on every call."""
        if self._val is None:
            raise ValueError("no validation set configured: set data.val to a location to evaluate")
        return self._val.val_batches(max_batches)

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per reason on this rank, plus truncated shard tars (counted on rank 0 only, so the
        trainer's sum over ranks counts each tar once)."""
        counts = Counter(self.train.skip_counts())
        if self._dp_rank == 0:
            for shards in self._shards:
                counts.update(shards.skips.counts)
        return dict(counts)

    def _sample_counts(self, train_sources: Mapping[str, MapDataset], train_dataset: MapDataset) -> dict[str, Any]:
        """The ``info()`` entries on sample counts: train (per source for a mixture) and val."""
        info: dict[str, Any] = {"train_samples": len(train_dataset)}
        if isinstance(train_dataset, MixedDataset):
            info.update({f"train_samples/{name}": len(source) for name, source in train_sources.items()})
        if self._val is not None:
            info["val_samples"] = self._val.num_samples
        return info
