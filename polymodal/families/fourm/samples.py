"""One 4M training sample from pre-tokenized shards: every modality at the same pre-tokenized crop, text as ids.

A shard sample is ``{folder: value}`` (see :mod:`polymodal.data.multimodal.decode`) with ``crop_settings``, the
``(n_crops, 5)`` rows ``(top, left, height, width, flip)`` in source pixels that ``polymodal pretokenize-4m``
wrote (row 0: the centre crop, unflipped). :class:`FourMSample` picks one row per sample, a random one from the
sample's generator in training and row 0 in evaluation (4M's ``PreTokenizedImageAugmenter``), and applies it to
every modality of the sample so they stay aligned:

* ``tok_*`` image tokens: that row of the stored codes, int64 ``(h·w,)``;
* pixels (``rgb@res``): the crop, flipped, resized to ``res`` (bilinear, antialiased), float in [0, 1], then
  normalised with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` (4M's ``RGBTransform``; a model taking pixels
  from this data, e.g. FourMViT, must use the same constants);
* ``det``: boxes shifted into the crop, clipped to it, dropped when nothing of them is left, flipped in x, then
  written as 4M's det string relative to the crop (:func:`~polymodal.data.synth.det_text.det_to_text`);
* ``caption`` and other text: one of the sample's strings, a random one in training, the first in evaluation.

Text becomes WordPiece ids + ``[EOS]``, truncated to the modality's ``max_tokens`` and right-padded with
``[PAD]`` = 0 to ``(max_tokens,)`` int64. A sample whose stored data does not fit the configuration (codes of
another grid, a crop outside the image, ...) raises :class:`SampleError` for the loader to count and skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import Tokenizer

from polymodal.data.multimodal.captions import pick_text
from polymodal.data.multimodal.loader import Sample
from polymodal.data.multimodal.skips import SampleError
from polymodal.data.multimodal.transforms import AlignedAugment
from polymodal.data.synth.det_text import det_to_text
from polymodal.families.fourm.modalities import CROP_COLUMNS, CROP_SETTINGS, ModalityRegistry, ModalitySpec
from polymodal.tokenizers.text.wordpiece import EOS_ID, PAD_ID

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_STEMS = ("rgb",)

CropRow = tuple[int, int, int, int, bool]  # top, left, height, width, flip


def normalise_rgb(pixels: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` (or batched) rgb in [0, 1] -> ImageNet-normalised, 4M's pixel input convention."""
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixels.dtype, device=pixels.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=pixels.dtype, device=pixels.device).view(shape)
    return (pixels - mean) / std


def text_ids(tokenizer: Tokenizer, text: str, max_tokens: int) -> torch.Tensor:
    """WordPiece ids of ``text`` + ``[EOS]``, truncated to ``max_tokens``, right-padded with ``[PAD]``."""
    ids = (tokenizer.encode(text).ids + [EOS_ID])[:max_tokens]
    padded = torch.full((max_tokens,), PAD_ID, dtype=torch.int64)
    padded[: len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return padded


def crop_boxes(boxes: torch.Tensor, crop: CropRow) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy source-pixel ``boxes`` -> (xyxy pixels of the (flipped) crop, bool mask of the boxes that keep an area
    inside it)."""
    top, left, height, width, flip = crop
    shifted = boxes.to(torch.float64) - torch.tensor([left, top, left, top], dtype=torch.float64)
    x = shifted[:, 0::2].clamp(0.0, float(width))
    y = shifted[:, 1::2].clamp(0.0, float(height))
    if flip:
        x = float(width) - x.flip(1)
    kept = (x[:, 1] > x[:, 0]) & (y[:, 1] > y[:, 0])
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1), kept


def _check_supported(spec: ModalitySpec) -> None:
    if spec.kind in ("seq_token", "seq_emb"):
        raise ValueError(f"modality {spec.name!r}: {spec.kind} modalities are not supported by the 4M shard data yet")
    if spec.is_pixels and spec.stem not in PIXEL_STEMS:
        raise ValueError(f"modality {spec.name!r}: pixel input is supported for {PIXEL_STEMS}, not {spec.stem!r}")


class FourMSample:
    """Shard sample -> ``{modality name: tensor}`` at one crop row (see the module docstring).

    Args:
        modalities: the registry; each modality is read from the shard folder ``spec.folder``.
        tokenizer: the WordPiece text tokenizer (4M id layout).
        train: random crop row and caption when True; row 0 and the first caption when False.
    """

    def __init__(self, modalities: ModalityRegistry, tokenizer: Tokenizer, train: bool) -> None:
        for spec in modalities.values():
            _check_supported(spec)
        self.modalities = modalities
        self.tokenizer = tokenizer
        self.train = train
        # Only their per-image crop/flip/resize is used: the crop comes from the row.
        self.resize = {
            spec.name: AlignedAugment(spec.resolution, [spec.name], train=False)
            for spec in modalities.values()
            if spec.is_pixels
        }

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator) -> Sample:
        present = [spec for spec in self.modalities.values() if spec.folder in sample]
        row, crop = 0, None
        if any(spec.is_image or spec.stem == "det" for spec in present):
            row, crop = self._pick_crop(sample, generator)
        out: Sample = {}
        for spec in present:
            value = sample[spec.folder]
            if spec.is_pixels:
                out[spec.name] = self._pixels(spec, value, crop)
            elif spec.is_image:
                out[spec.name] = self._codes(spec, value, row)
            elif spec.stem == "det":
                out[spec.name] = self._det(spec, value, crop)
            else:
                out[spec.name] = text_ids(
                    self.tokenizer, pick_text(value, generator, self.train, spec.folder), spec.max_tokens
                )
        return out

    def _pick_crop(self, sample: Mapping[str, Any], generator: torch.Generator) -> tuple[int, CropRow]:
        """The index of the crop row used for this sample, and the row."""
        rows = sample.get(CROP_SETTINGS)
        if not isinstance(rows, torch.Tensor):
            raise SampleError("missing_crop_settings", None, f"the sample has no {CROP_SETTINGS} array")
        if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] != len(CROP_COLUMNS):
            detail = f"{CROP_SETTINGS} must be (n_crops, 5), got {tuple(rows.shape)}"
            raise SampleError("bad_crop_settings", None, detail)
        index = int(torch.randint(rows.shape[0], (), generator=generator)) if self.train else 0
        top, left, height, width, flip = (int(v) for v in rows[index])
        if top < 0 or left < 0 or height < 1 or width < 1:
            raise SampleError("bad_crop_settings", None, f"crop row {index} {rows[index].tolist()} is invalid")
        return index, (top, left, height, width, bool(flip))

    def _codes(self, spec: ModalitySpec, codes: Any, row: int) -> torch.Tensor:
        positions = spec.num_positions()
        if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[1] != positions:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise SampleError("bad_tokens", None, f"{spec.folder}: codes {shape}, expected (n_crops, {positions})")
        if codes.shape[0] <= row:
            raise SampleError("bad_tokens", None, f"{spec.folder}: {codes.shape[0]} crops, but crop row {row} picked")
        picked = codes[row].to(torch.int64)
        if int(picked.min()) < 0 or int(picked.max()) >= spec.vocab_size:
            raise SampleError("bad_tokens", None, f"{spec.folder}: codes outside 0..{spec.vocab_size - 1} (vocab_size)")
        return picked

    def _pixels(self, spec: ModalitySpec, image: Any, crop: CropRow) -> torch.Tensor:
        top, left, height, width, flip = crop
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.dtype != torch.uint8:
            raise SampleError("bad_image", None, f"{spec.folder}: expected a uint8 [C, H, W] image")
        if top + height > image.shape[-2] or left + width > image.shape[-1]:
            detail = f"crop {crop[:4]} does not fit the {tuple(image.shape[-2:])} {spec.folder} image"
            raise SampleError("bad_crop_settings", None, detail)
        return normalise_rgb(self.resize[spec.name].augment_image(spec.stem, image, crop[:4], flip))

    def _det(self, spec: ModalitySpec, det: Mapping[str, torch.Tensor], crop: CropRow) -> torch.Tensor:
        boxes, kept = crop_boxes(det["boxes"], crop)
        try:
            text = det_to_text(boxes[kept], det["labels"][kept], (crop[2], crop[3]))
        except ValueError as error:  # a class id outside the class names, a NaN coordinate
            raise SampleError("bad_det", None, f"{spec.folder}: {error}") from error
        return text_ids(self.tokenizer, text, spec.max_tokens)
