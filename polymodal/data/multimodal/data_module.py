"""The multimodal data object the trainer receives: shard (or ImageFolder) sources, train loader, val batches.

Config (built with ``instantiate(cfg.data, seed=..., dp_rank=..., dp_world=...)``)::

    data:
      _target_: polymodal.data.multimodal.data_module.MultimodalData
      train: data/scenes/[rgb,depth,caption]/shard-{00000..00099}.tar   # or {name: pattern, ...} to mix
      val: data/scenes_val/[rgb,depth,caption]/shard-{00000..00009}.tar
      modalities: [rgb@64, depth@32, caption]
      image_size: 64
      batch_size: 32

Sources. ``train`` and ``val`` are each one location or a dict ``{name: location}``; a dict is mixed by
:class:`MixedDataset` with ``weights`` (default: proportional to the sources' sizes; a ``val`` mixture uses
the same ``weights``) and every sample then carries its ``"source"`` name. With ``format: shards`` (default) a
location is a 4M shard pattern and each source loads the configured modalities its pattern has. With
``format: imagefolder`` a location is an ImageFolder root (see :mod:`polymodal.data.multimodal.imagefolder`)
whose ``train/`` resp. ``val/`` split is read; it provides ``rgb``, ``label`` and ``caption``. Every
configured modality must come from at least one source.

Batches. Training samples get :class:`AlignedAugment` (random resized crop with ``scale``, flip), validation
samples the centre square crop; ``rgb`` becomes float32 in [0, 1]. Each modality ``m`` is in the batch with a
bool ``m_present`` [B]; a sample whose source lacks an image modality or ``label`` gets zeros of the declared
shape, one lacking ``caption``/``det`` gets ``None``. ``batch["sample_id"]`` is int64 [B].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from polymodal.data.multimodal.imagefolder import ImageFolderDataset
from polymodal.data.multimodal.loader import Batch, MapDataset, ResumableLoader, Sample
from polymodal.data.multimodal.mixing import MixedDataset, TensorSpec, collate_with_absent
from polymodal.data.multimodal.shard_patterns import expand_shard_pattern
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.transforms import EXPECTED_CHANNELS, AlignedAugment

FORMATS = ("shards", "imagefolder")
IMAGEFOLDER_MODALITIES = ("rgb", "label", "caption")
IMAGE_DTYPES = {
    "rgb": torch.float32,
    "depth": torch.float32,
    "normal": torch.float32,
    "semseg": torch.int64,
    "edges": torch.uint8,
}
SOURCE_KEY = "source"


def batch_specs(resolutions: Mapping[str, int | None]) -> dict[str, TensorSpec]:
    """Per-sample (shape, dtype) of the tensor modalities after augmentation, used to fill absent ones."""
    specs: dict[str, TensorSpec] = {}
    for name, resolution in resolutions.items():
        if name in IMAGE_DTYPES and resolution is not None:
            channels = EXPECTED_CHANNELS[name]
            shape = (resolution, resolution) if channels is None else (channels, resolution, resolution)
            specs[name] = (shape, IMAGE_DTYPES[name])
    if "label" in resolutions:
        specs["label"] = ((), torch.int64)
    return specs


class PrepareSample:
    """Keeps only the configured modalities (and the mixture's source name), then augments them."""

    def __init__(self, augment: AlignedAugment, modalities: list[str]) -> None:
        self.augment = augment
        self.keep = {*modalities, SOURCE_KEY}

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        return self.augment({k: v for k, v in sample.items() if k in self.keep}, generator)


class MultimodalData:
    """Train loader (``train``), validation batches, ``info()`` and skip counts for multimodal pre-training.

    Args:
        train, val: a location or ``{name: location}`` (a mixture); ``val=None`` means no validation set.
        modalities: modality names, image ones optionally ``name@res`` (default resolution ``image_size``).
        image_size: output resolution of image modalities without ``@res``.
        batch_size: samples per rank and step.
        weights: mixture weights by source name (only with dict locations); default proportional to size.
        format: ``"shards"`` (4M shard patterns) or ``"imagefolder"`` (ImageFolder roots).
        num_workers: decoding worker processes per rank.
        error_budget: unreadable samples tolerated before the loader stops with an error.
        cache_dir: shard indexes are cached under ``<cache_dir>/shard_index``.
        storage_options: fsspec options for remote shards (e.g. S3 endpoint and credentials source).
        scale: area-fraction range of the training random resized crop.
        seed, dp_rank, dp_world: injected by the trainer.
    """

    def __init__(
        self,
        train: str | dict[str, str],
        val: str | dict[str, str] | None,
        modalities: list[str],
        image_size: int,
        batch_size: int,
        weights: dict[str, float] | None = None,
        format: str = "shards",
        num_workers: int = 0,
        error_budget: int = 100,
        cache_dir: str = ".cache/polymodal",
        storage_options: dict[str, Any] | None = None,
        scale: tuple[float, float] = (0.2, 1.0),
        seed: int = 0,
        dp_rank: int = 0,
        dp_world: int = 1,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown data format {format!r}; expected one of {FORMATS}")
        if weights is not None and not isinstance(train, Mapping):
            raise ValueError("weights are only meaningful for a mixture: give `train` as {name: location}")
        self.format = format
        self.modalities = list(modalities)
        self.tokens_per_sample = 1
        self._cache_dir = Path(cache_dir) / "shard_index"
        self._storage_options = storage_options
        self._error_budget = error_budget
        self._dp_rank = dp_rank
        self._shards: list[MultimodalShards] = []
        train_augment = AlignedAugment(image_size, self.modalities, scale=tuple(scale), train=True)
        self.modality_names = list(train_augment.resolutions)
        eval_augment = AlignedAugment(image_size, self.modalities, train=False)
        collate = partial(
            collate_with_absent, modalities=self.modality_names, specs=batch_specs(train_augment.resolutions)
        )
        loader = partial(
            ResumableLoader,
            batch_size=batch_size,
            seed=seed,
            dp_rank=dp_rank,
            dp_world=dp_world,
            num_workers=num_workers,
            collate=collate,
            error_budget=error_budget,
        )
        self.train_sources, self.train_dataset = self._open(train, "train", weights, seed)
        self.train = loader(self.train_dataset, transform=PrepareSample(train_augment, self.modality_names))
        self._val: ResumableLoader | None = None
        if val is not None:
            _, val_dataset = self._open(val, "val", weights, seed)
            self._val = loader(val_dataset, transform=PrepareSample(eval_augment, self.modality_names), shuffle=False)

    def _open(
        self, locations: str | Mapping[str, str], split: str, weights: Mapping[str, float] | None, seed: int
    ) -> tuple[dict[str, MapDataset], MapDataset]:
        """The sources of one split and the dataset the loader reads (the single source, or their mixture)."""
        if isinstance(locations, Mapping):
            if not locations:
                raise ValueError(f"the {split} mixture names no sources")
            sources = {name: self._open_source(name, location, split) for name, location in locations.items()}
        else:
            sources = {split: self._open_source(split, locations, split)}
        provided = {name for source in sources.values() for name in self._provided(source)}
        missing = [m for m in self.modality_names if m not in provided]
        if missing:
            raise ValueError(f"modalities {missing} are in none of the {split} sources {list(sources)} ({self.format})")
        if not isinstance(locations, Mapping):
            return sources, sources[split]
        if weights is None:
            mixture_weights = {name: float(len(source)) for name, source in sources.items()}
        else:
            mixture_weights = {name: float(w) for name, w in weights.items()}
        return sources, MixedDataset(sources, mixture_weights, seed)

    @staticmethod
    def _provided(source: MapDataset) -> list[str]:
        return source.modalities if isinstance(source, MultimodalShards) else list(IMAGEFOLDER_MODALITIES)

    def _open_source(self, name: str, location: str, split: str) -> MapDataset:
        if self.format == "imagefolder":
            if not set(IMAGEFOLDER_MODALITIES) & set(self.modality_names):
                raise ValueError(f"{split} source {name!r}: an ImageFolder gives {IMAGEFOLDER_MODALITIES}, none wanted")
            return ImageFolderDataset(location, split=split)
        available = expand_shard_pattern(location)
        wanted = [m for m in self.modality_names if m in available]
        if not wanted:
            raise ValueError(
                f"{split} source {name!r} ({location}) has modalities {list(available)}, none of {self.modality_names}"
            )
        shards = MultimodalShards(
            location,
            modalities=wanted,
            cache_dir=self._cache_dir,
            error_budget=self._error_budget,
            storage_options=self._storage_options,
        )
        self._shards.append(shards)
        return shards

    def val_batches(self, max_batches: int | None) -> Iterator[Batch]:
        """Deterministic validation batches: ids in order, centre-cropped, the same on every call."""
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

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "format": self.format,
            "modalities": self.modality_names,
            "train_samples": len(self.train_dataset),
        }
        if isinstance(self.train_dataset, MixedDataset):
            info.update({f"train_samples/{name}": len(source) for name, source in self.train_sources.items()})
        if self._val is not None:
            info["val_samples"] = self._val.num_samples
        return info
