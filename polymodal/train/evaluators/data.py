"""An evaluator's own data: images with labels (and captions) from an ImageFolder split or a shard pattern, read
with the multimodal readers and the validation transform (centre square crop, resize, ``rgb`` as float in [0, 1]);
and the text encoder that turns prompts and captions into padded token ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from polymodal.config.errors import ConfigError
from polymodal.data.multimodal.imagefolder import ImageFolderDataset
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.transforms import AlignedAugment
from polymodal.data.synth.labels import ATTRIBUTE_CLASSES, LABEL_MODALITIES
from polymodal.tokenizers.text.captions import CaptionEncoder

FORMATS = ("imagefolder", "shards")
SCENE_LABEL_ATTRIBUTES = {modality: attribute for attribute, modality in LABEL_MODALITIES.items()}
IMAGE = "rgb"


class ImageSplit:
    """Images, labels and captions of one evaluation split.

    Args:
        location: an ImageFolder root (``format: imagefolder``, reading its ``split`` folder) or a 4M shard pattern
            such as ``data/val/[rgb,label,caption]/shard-{00000..00009}.tar`` (``format: shards``).
        label_key: the sample key holding the integer label; ``a.b`` reads field ``b`` of a JSON modality ``a``.
            ImageFolder samples have ``label``; synthetic shards carry the scene labels as the modalities ``label``
            (object count), ``colour_label`` and ``shape_label`` (of the largest visible object), whose class
            names the split then knows (for zero-shot prompts).
        attribute: with an ImageFolder, the scene attribute its ``label`` holds (``count``, ``colour`` or
            ``shape``, from the split's ``attributes.json``); None: the class folders.
        caption_key: the sample key holding the caption: a string, or a list of strings of which the first is taken.
        max_samples: read only ``max_samples`` samples, spread evenly over the split (not its first ones: an
            ImageFolder lists its samples class by class, so its first ones hold only the first classes).
    """

    def __init__(
        self,
        location: str,
        split: str = "val",
        format: str = "imagefolder",
        image_size: int = 64,
        label_key: str | None = "label",
        caption_key: str | None = None,
        max_samples: int | None = None,
        cache_dir: str | None = None,
        attribute: str | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ConfigError(f"evaluation data format must be one of {FORMATS}, got {format!r}")
        if max_samples is not None and max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1 (or null for the whole split), got {max_samples}")
        if attribute is not None and format != "imagefolder":
            raise ConfigError("attribute picks an ImageFolder's label; with shards choose the label modality")
        self.key = (location, split, format, image_size, label_key, caption_key, max_samples, attribute)
        self.images_key = (location, split, format, image_size, max_samples)  # what the images depend on
        self.label_key, self.caption_key = label_key, caption_key
        self.class_names: list[str] | None = None
        if format == "imagefolder":
            self.dataset: Any = ImageFolderDataset(location, split=split, attribute=attribute)
            self.class_names = self.dataset.classes
        else:
            folders = [IMAGE, *(key.split(".", 1)[0] for key in (label_key, caption_key) if key)]
            self.dataset = MultimodalShards(location, modalities=list(dict.fromkeys(folders)), cache_dir=cache_dir)
            if label_key in SCENE_LABEL_ATTRIBUTES:
                self.class_names = list(ATTRIBUTE_CLASSES[SCENE_LABEL_ATTRIBUTES[label_key]])
        self.indices = spread_indices(len(self.dataset), max_samples)
        self.transform = AlignedAugment(image_size, [IMAGE], train=False)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, indices: Sequence[int]) -> dict[str, Any]:
        """``{"rgb": float [B,3,S,S], "label": int64 [B], "caption": [str]}`` (label, caption: with their keys)."""
        samples = [self.dataset[self.indices[index]] for index in indices]
        batch: dict[str, Any] = {IMAGE: torch.stack([self.transform({IMAGE: s[IMAGE]})[IMAGE] for s in samples])}
        if self.label_key:
            batch["label"] = torch.tensor([int(_field(s, self.label_key)) for s in samples], dtype=torch.int64)
        if self.caption_key:
            batch["caption"] = [_caption(_field(s, self.caption_key)) for s in samples]
        return batch


def spread_indices(count: int, max_samples: int | None) -> range | list[int]:
    """All ``count`` indices, or ``max_samples`` of them spread evenly from the first on."""
    if max_samples is None or max_samples >= count:
        return range(count)
    return [index * count // max_samples for index in range(max_samples)]


def _field(sample: Mapping[str, Any], key: str) -> Any:
    value: Any = sample
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"evaluation sample has no '{key}' (at '{part}')")
        value = value[part]
    return value


def _caption(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if not isinstance(value, str):
        raise ValueError(f"a caption must be a string or a list of strings, got {value!r}")
    return value


class TextEncoder:
    """Texts -> ``int64 [B, context_length]`` token ids (truncated, right-padded with ``pad_id``) and a bool mask of
    the real tokens. ``tokenizer``: a Hugging Face ``tokenizers`` JSON file, or a ``tokenizers.Tokenizer``.

    ``caption_layout``: encode as the training data encodes captions
    (:class:`~polymodal.tokenizers.text.captions.CaptionEncoder`: start token, text, end token, then the
    tokenizer's own pad token, so ``pad_id`` is not used), for a text tower trained on that data.
    """

    def __init__(self, tokenizer: Any, context_length: int, pad_id: int = 0, caption_layout: bool = False) -> None:
        if isinstance(tokenizer, (str, Path)):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer))
        if context_length < 1:
            raise ConfigError(f"context_length must be >= 1, got {context_length}")
        self.tokenizer, self.context_length, self.pad_id = tokenizer, context_length, pad_id
        self.captions = CaptionEncoder(tokenizer, context_length) if caption_layout else None

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.encode(texts)
        return encoded["ids"], encoded["mask"]

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``ids`` and ``mask`` as :meth:`__call__` gives them and ``eot`` int64 ``[B]``: the last real token's
        position (with ``caption_layout``: the end token's)."""
        if self.captions is not None:
            return self.captions(texts)
        ids = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros(len(texts), self.context_length, dtype=torch.bool)
        for row, text in enumerate(texts):
            tokens = self.tokenizer.encode(text).ids[: self.context_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
            mask[row, : len(tokens)] = True
        return {"ids": ids, "mask": mask, "eot": (mask.sum(dim=1) - 1).clamp(min=0)}
