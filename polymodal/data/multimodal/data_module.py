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
whose ``train/`` resp. ``val/`` split is read; it provides ``rgb``, ``label`` and ``caption``, and the scene labels
``colour_label`` and ``shape_label`` from the split's ``attributes.json`` (``label_attribute: count`` then names
the three as the shards do). Every configured modality must come from at least one source.

Batches. Training samples get :class:`AlignedAugment` (random resized crop with ``scale``, horizontal flip with
probability ``hflip``: 0 for captions that say left and right), validation samples the centre square crop; ``rgb``
becomes float32 in [0, 1]. Each modality ``m`` is in the batch with a bool ``m_present`` [B]; a sample whose source
lacks an image modality or ``label`` gets zeros of the declared shape, one lacking ``caption``/``det`` gets ``None``.
``batch["sample_id"]`` is int64 [B].

Captions as tokens. With ``caption_tokenizer`` (a text tokenizer JSON this library trains, BPE or WordPiece) each
sample keeps one caption (a random one of its captions in training, the first in evaluation; ``batch["caption"]``
is then a list of strings, None where absent) and the batch gets ``caption_ids`` int64 [B, caption_tokens],
``caption_mask`` bool [B, caption_tokens] and ``caption_eot`` int64 [B]: start token, text, end token, padding
(:class:`~polymodal.tokenizers.text.captions.CaptionEncoder`).

Mixup/CutMix. ``mixup: {num_classes: 10, mixup_alpha: 0.8, cutmix_alpha: 1.0, prob: 1.0, switch_prob: 0.5,
label_smoothing: 0.1}`` (the keys of :class:`~polymodal.data.multimodal.mixup.MixupCutmix`; unknown keys are
errors) mixes the training batches after collation and replaces ``label`` with soft targets [B, num_classes] (and
each label of ``extra_labels: {key: num_classes}`` likewise); the loss must then not smooth again
(``loss.label_smoothing: 0``). Validation batches keep their integer labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from polymodal.config.validation import build_section
from polymodal.data.largest import LargestBatch
from polymodal.data.multimodal.captions import CollateCaptions, pick_text, pick_text_pair
from polymodal.data.multimodal.collate import TensorSpec, collate_with_absent
from polymodal.data.multimodal.imagefolder import ImageFolderDataset
from polymodal.data.multimodal.loader import BatchTransform, MapDataset, Sample, chain_batch_transforms
from polymodal.data.multimodal.mixup import MixupCutmix
from polymodal.data.multimodal.shard_patterns import expand_shard_pattern
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.sources import SourcedData
from polymodal.data.multimodal.transforms import (
    EXPECTED_CHANNELS,
    LABEL_NAMES,
    TWIN_PREFIX,
    AlignedAugment,
    modality_kind,
    parse_modalities_spec,
)
from polymodal.data.synth.labels import LABEL_MODALITIES, check_attribute
from polymodal.tokenizers.carried import TEXT
from polymodal.tokenizers.text.captions import CaptionEncoder

FORMATS = ("shards", "imagefolder")
IMAGEFOLDER_ATTRIBUTE_LABELS = {m: a for a, m in LABEL_MODALITIES.items() if m != "label"}  # from attributes.json
IMAGEFOLDER_MODALITIES = ("rgb", "label", "caption", *IMAGEFOLDER_ATTRIBUTE_LABELS)
IMAGE_DTYPES = {
    "rgb": torch.float32,
    "depth": torch.float32,
    "normal": torch.float32,
    "semseg": torch.int64,
    "edges": torch.uint8,
}
SOURCE_KEY = "source"
CAPTION = "caption"
TWIN_CAPTION = TWIN_PREFIX + CAPTION


def batch_specs(resolutions: Mapping[str, int | None]) -> dict[str, TensorSpec]:
    """Per-sample (shape, dtype) of the tensor modalities after augmentation, used to fill absent ones."""
    specs: dict[str, TensorSpec] = {}
    for name, resolution in resolutions.items():
        kind = modality_kind(name)
        if kind in IMAGE_DTYPES and resolution is not None:
            channels = EXPECTED_CHANNELS[kind]
            shape = (resolution, resolution) if channels is None else (channels, resolution, resolution)
            specs[name] = (shape, IMAGE_DTYPES[kind])
    for name in LABEL_NAMES:
        if name in resolutions:
            specs[name] = ((), torch.int64)
    return specs


class PrepareSample:
    """Keeps only the configured modalities (and the mixture's source name), then augments them; with
    ``pick_caption`` a sample's captions become one (random in training, the first otherwise)."""

    def __init__(self, augment: AlignedAugment, modalities: list[str], pick_caption: bool = False) -> None:
        self.augment = augment
        self.keep = {*modalities, SOURCE_KEY}
        self.pick_caption = pick_caption

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        out = self.augment({k: v for k, v in sample.items() if k in self.keep}, generator)
        if self.pick_caption and TWIN_CAPTION in out and CAPTION in out:
            out[CAPTION], out[TWIN_CAPTION] = pick_text_pair(
                out[CAPTION], out[TWIN_CAPTION], generator, self.augment.train
            )
        elif self.pick_caption and CAPTION in out:
            out[CAPTION] = pick_text(out[CAPTION], generator, self.augment.train)
        return out


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
        hflip: probability of a horizontal flip of a training sample; 0 turns flips off (a flip would swap the
            left and the right of its captions).
        caption_tokenizer: a text tokenizer JSON; captions then also come as token ids (module docstring).
        caption_tokens: the length of ``caption_ids`` (start and end tokens included).
        mixup: Mixup/CutMix and label smoothing of the training batches (module docstring); None: off.
        label_attribute: with ``format: imagefolder``, the scene attribute ``label`` holds (``count``, ``colour``
            or ``shape``, read from each split's ``attributes.json``); None: the tree's class folders.
        batch_transform, eval_batch_transform: applied to every collated train (after ``mixup``) resp. validation
            batch with a generator seeded by the batch's position (:mod:`polymodal.data.multimodal.loader`), e.g.
            the prefix lengths of :mod:`polymodal.data.multimodal.prefix`; None for none.
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
        hflip: float = 0.5,
        caption_tokenizer: str | None = None,
        caption_tokens: int = 32,
        mixup: Mapping[str, Any] | None = None,
        label_attribute: str | None = None,
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
        if label_attribute is not None and format != "imagefolder":
            raise ValueError("label_attribute picks an ImageFolder's label; shards carry each label as a modality")
        self.format = format
        self.label_attribute = None if label_attribute is None else check_attribute(label_attribute)
        self.modalities = list(modalities)
        self.tokens_per_sample = None  # images, not tokens: the trainer logs samples/s only
        train_augment = AlignedAugment(image_size, self.modalities, scale=tuple(scale), hflip=hflip, train=True)
        self.modality_names = list(train_augment.resolutions)
        eval_augment = AlignedAugment(image_size, self.modalities, train=False)
        self._caption_tokenizer = caption_tokenizer
        collate = partial(
            collate_with_absent, modalities=self.modality_names, specs=batch_specs(train_augment.resolutions)
        )
        if caption_tokenizer is not None:
            if CAPTION not in self.modality_names:
                raise ValueError(f"caption_tokenizer is set but {CAPTION!r} is not in modalities {self.modality_names}")
            encoder = CaptionEncoder.from_file(caption_tokenizer, caption_tokens)
            for key in (CAPTION, TWIN_CAPTION) if TWIN_CAPTION in self.modality_names else (CAPTION,):
                collate = CollateCaptions(collate, encoder, key)
        self.mixup = mixup_transform(mixup, self.modality_names)
        pick_caption = caption_tokenizer is not None
        self._open_splits(
            train,
            val,
            weights,
            collate=collate,
            train_transform=PrepareSample(train_augment, self.modality_names, pick_caption),
            eval_transform=PrepareSample(eval_augment, self.modality_names, pick_caption),
            train_batch_transform=chain_batch_transforms(self.mixup, batch_transform),
            eval_batch_transform=eval_batch_transform,
        )

    @classmethod
    def largest_batch(
        cls,
        modalities: list[str],
        image_size: int,
        batch_size: int,
        caption_tokenizer: str | None = None,
        caption_tokens: int = 32,
        mixup: Mapping[str, Any] | None = None,
        batch_transform: BatchTransform | None = None,
        device: torch.device | str = "cpu",
        **sources_and_loading: Any,
    ) -> LargestBatch:
        """A batch of the shape ``train`` yields, every modality present (zeros; class 0; with ``mixup``, soft targets
        of class 0; captions of ``caption_tokens`` tokens), from the config alone: no source or tokenizer is opened
        (``sources_and_loading``: the other arguments, which change no shape). The train ``batch_transform`` (AIM's
        prefix lengths) adds its keys, drawn from a fixed seed. Detections, and captions without a tokenizer, are
        text of any length and have no largest shape. See :mod:`polymodal.data.largest`."""
        resolutions = parse_modalities_spec(modalities, image_size)
        specs = batch_specs(resolutions)
        mixing = mixup_transform(mixup, list(resolutions))
        if mixing is not None:
            specs.update({key: ((count,), torch.float32) for key, count in mixing.label_classes.items()})
        tokenized = [key for key in (CAPTION, TWIN_CAPTION) if caption_tokenizer is not None and key in resolutions]
        shapeless = [name for name in resolutions if name not in specs and name not in tokenized]
        if shapeless:
            raise ValueError(f"modalities {shapeless} are text of any length: a batch of them has no largest shape")
        batch: dict[str, Any] = {"sample_id": torch.arange(batch_size, device=device)}
        for name, (shape, dtype) in specs.items():
            batch[name] = torch.zeros(batch_size, *shape, dtype=dtype, device=device)
            batch[f"{name}_present"] = torch.ones(batch_size, dtype=torch.bool, device=device)
        for key in mixing.label_classes if mixing is not None else ():
            batch[key][:, 0] = 1.0
        for key in tokenized:
            batch[f"{key}_ids"] = torch.zeros(batch_size, caption_tokens, dtype=torch.int64, device=device)
            batch[f"{key}_mask"] = torch.ones(batch_size, caption_tokens, dtype=torch.bool, device=device)
            batch[f"{key}_eot"] = torch.full((batch_size,), caption_tokens - 1, dtype=torch.int64, device=device)
            batch[f"{key}_present"] = torch.ones(batch_size, dtype=torch.bool, device=device)
            specs[key] = ((caption_tokens,), torch.int64)
        if batch_transform is not None:
            added = batch_transform(batch, torch.Generator().manual_seed(0))
            batch = {
                key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in added.items()
            }
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
            extra_labels = {m: a for m, a in IMAGEFOLDER_ATTRIBUTE_LABELS.items() if m in self.modality_names}
            return ImageFolderDataset(location, split=split, attribute=self.label_attribute, extra_labels=extra_labels)
        available = expand_shard_pattern(location)
        wanted = [m for m in self.modality_names if m in available]
        if not wanted:
            raise ValueError(
                f"{split} source {name!r} ({location}) has modalities {list(available)}, none of {self.modality_names}"
            )
        return self._open_shards(location, wanted)

    def tokenizer_paths(self) -> dict[str, str]:
        """The caption tokenizer, if any (a run carries a copy)."""
        return {TEXT: self._caption_tokenizer} if self._caption_tokenizer is not None else {}

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "format": self.format,
            "modalities": self.modality_names,
            **self._sample_counts(self.train_sources, self.train_dataset),
        }
        return info


def mixup_transform(mixup: Mapping[str, Any] | None, modalities: list[str]) -> MixupCutmix | None:
    """The ``mixup`` config section checked key by key (a wrong key is a one-line error) and built; it mixes modalities
    of the batch, so its image and label keys must be configured ones."""
    if mixup is None:
        return None
    transform = build_section(MixupCutmix, mixup, "data.mixup")
    missing = [key for key in (transform.image_key, *transform.label_classes) if key not in modalities]
    if missing:
        raise ValueError(f"data.mixup mixes {missing}, which are not in modalities {modalities}")
    return transform
