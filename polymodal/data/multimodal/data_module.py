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

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from polymodal.data.largest import LargestBatch
from polymodal.data.multimodal.collate import TensorSpec, collate_with_absent
from polymodal.data.multimodal.imagefolder import ImageFolderDataset
from polymodal.data.multimodal.loader import BatchTransform, MapDataset, Sample
from polymodal.data.multimodal.shard_patterns import expand_shard_pattern
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.sources import SourcedData
from polymodal.data.multimodal.transforms import EXPECTED_CHANNELS, AlignedAugment, parse_modalities_spec

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


class MultimodalData(SourcedData):
    """Train loader (``train``), validation batches, ``info()`` and skip counts for multimodal pre-training.

    Args:
        train, val: a location or ``{name: location}`` (a mixture); ``val=None`` means no validation set.
        modalities: modality names, image ones optionally ``name@res`` (default resolution ``image_size``).
        image_size: output resolution of image modalities without ``@res``.
        batch_size: samples per rank and step.
        weights: mixture weights by source name (only with dict locations); default proportional to size.
        format: ``"shards"`` (4M shard patterns) or ``"imagefolder"`` (ImageFolder roots).
        num_workers: decoding worker processes per rank.
        error_budget: distinct bad samples tolerated before the loader stops with an error.
        cache_dir: the cache root (default: the user cache, :func:`polymodal.files.cache_root`); shard
            indexes are cached under ``<cache_dir>/shard_index``.
        storage_options: fsspec options for remote shards (e.g. S3 endpoint and credentials source).
        scale: area-fraction range of the training random resized crop.
        batch_transform, eval_batch_transform: applied to every collated train resp. validation batch with a
            generator seeded by the batch's position (see :mod:`polymodal.data.multimodal.loader`), e.g. the prefix
            lengths of :mod:`polymodal.data.multimodal.prefix`; None for none.
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
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
        scale: tuple[float, float] = (0.2, 1.0),
        batch_transform: BatchTransform | None = None,
        eval_batch_transform: BatchTransform | None = None,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world: int = 1,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown data format {format!r}; expected one of {FORMATS}")
        if weights is not None and not isinstance(train, Mapping):
            raise ValueError("weights are only meaningful for a mixture: give `train` as {name: location}")
        super().__init__(batch_size, num_workers, error_budget, cache_dir, storage_options, seed, dp_rank, dp_world)
        self.format = format
        self.modalities = list(modalities)
        self.tokens_per_sample = None  # images, not tokens: the trainer logs samples/s only
        train_augment = AlignedAugment(image_size, self.modalities, scale=tuple(scale), train=True)
        self.modality_names = list(train_augment.resolutions)
        eval_augment = AlignedAugment(image_size, self.modalities, train=False)
        self._open_splits(
            train,
            val,
            weights,
            collate=partial(
                collate_with_absent, modalities=self.modality_names, specs=batch_specs(train_augment.resolutions)
            ),
            train_transform=PrepareSample(train_augment, self.modality_names),
            eval_transform=PrepareSample(eval_augment, self.modality_names),
            batch_transform=batch_transform,
            eval_batch_transform=eval_batch_transform,
        )

    @classmethod
    def largest_batch(
        cls,
        modalities: list[str],
        image_size: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        **sources_and_loading: Any,
    ) -> LargestBatch:
        """A batch of the shape ``train`` yields, every modality present (zeros; class 0), from the config alone: no
        source is opened (``sources_and_loading``: the other arguments, which change no shape). Captions and
        detections are text of any length and have no largest shape. See :mod:`polymodal.data.largest`."""
        resolutions = parse_modalities_spec(modalities, image_size)
        specs = batch_specs(resolutions)
        shapeless = [name for name in resolutions if name not in specs]
        if shapeless:
            raise ValueError(f"modalities {shapeless} are text of any length: a batch of them has no largest shape")
        batch: dict[str, Any] = {"sample_id": torch.arange(batch_size, device=device)}
        for name, (shape, dtype) in specs.items():
            batch[name] = torch.zeros(batch_size, *shape, dtype=dtype, device=device)
            batch[f"{name}_present"] = torch.ones(batch_size, dtype=torch.bool, device=device)
        shapes = ", ".join(f"{name} {'x'.join(map(str, shape))}".strip() for name, (shape, _) in specs.items())
        return LargestBatch(batch, f"{batch_size} samples of {shapes}")

    def _missing_modalities(self, sources: Mapping[str, MapDataset]) -> list[str]:
        provided = {name for source in sources.values() for name in self._provided(source)}
        return [m for m in self.modality_names if m not in provided]

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
        return self._open_shards(location, wanted)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "format": self.format,
            "modalities": self.modality_names,
            **self._sample_counts(self.train_sources, self.train_dataset),
        }
        return info
