"""Generations for people: token grids decoded to images by their tokenizers, sequences decoded to text, the columns
of the PNG grid (:mod:`polymodal.families.fourm.grid`: inputs, each prediction titled by what it was predicted from,
its ground truth beside it when the inputs came from shards that hold it) and a JSON file of texts and token ids.

Pixel inputs are un-normalised from ImageNet statistics. The ground truth of a token modality is the sample's own
tokens decoded by the same tokenizer as the prediction, so the two differ by the model's errors only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from polymodal.families.fourm.generate.inputs import Entry, row_inputs
from polymodal.families.fourm.grid.columns import TOKEN_PREFIX, Column, input_title, prediction_columns
from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.families.fourm.samples import IMAGENET_MEAN, IMAGENET_STD
from polymodal.tokenizers.image.tokenizer import ImageTokenizer


@dataclass
class DecodedModality:
    """One modality of a generation batch, decoded: ``images`` in natural units (or None) with the tokenizer
    modality that says how to view them, or ``texts``; ``ids`` are each sample's input token ids."""

    name: str
    generated: bool
    ids: list[list[int]]
    images: Tensor | None = None
    view: str | None = None
    texts: list[str] | None = None


def check_decoders(
    targets: Sequence[str],
    modalities: Mapping[str, ModalitySpec],
    image_tokenizers: Mapping[str, ImageTokenizer],
    text_tokenizer: Tokenizer | None,
) -> None:
    """Raise a ValueError when a target has no decoder, or a tokenizer does not fit its modality."""
    for name in targets:
        spec = modalities[name]
        if spec.is_image and name not in image_tokenizers:
            raise ValueError(f"no image tokenizer given for the target {name!r} (e.g. --tokenizer {name}=<dir>)")
        if spec.is_sequence and text_tokenizer is None:
            raise ValueError(f"the target {name!r} is text: give the WordPiece text tokenizer (--text-tokenizer)")
    for name, tokenizer in image_tokenizers.items():
        if name not in modalities or not modalities[name].is_image or modalities[name].is_pixels:
            raise ValueError(f"image tokenizer given for {name!r}, which is not a token-grid modality of the model")
        spec = modalities[name]
        if tokenizer.codebook_size != spec.vocab_size or tokenizer.latent_grid(spec.resolution) != spec.grid:
            raise ValueError(
                f"the {tokenizer.modality} tokenizer given for {name!r} has {tokenizer.codebook_size} codes and a "
                f"{tokenizer.latent_grid(spec.resolution)} grid at {spec.resolution} px; the modality has "
                f"{spec.vocab_size} codes on a {spec.grid} grid"
            )


def decode_generations(
    batch: Mapping[str, Entry],
    modalities: Mapping[str, ModalitySpec],
    generated: Sequence[str],
    image_tokenizers: Mapping[str, ImageTokenizer],
    text_tokenizer: Tokenizer | None,
) -> list[DecodedModality]:
    """Decode every modality of ``batch`` that can be shown (``generated`` names the targets); a token-grid input
    without a tokenizer or a text input without the text tokenizer keeps its ids only."""
    decoded = []
    for name, entry in batch.items():
        spec = modalities[name]
        item = DecodedModality(name, name in generated, row_inputs(entry) if not spec.is_pixels else [])
        if spec.is_pixels:
            item.images, item.view = _unnormalised_rgb(entry["tensor"]), "rgb"
        elif spec.is_image and name in image_tokenizers:
            tokenizer = image_tokenizers[name]
            codes = entry["tensor"].reshape(-1, *spec.grid).to(next(tokenizer.parameters()).device)
            item.images, item.view = tokenizer.eval().decode(codes).cpu(), tokenizer.modality
        elif spec.kind in ("seq", "seq_token") and text_tokenizer is not None:
            item.texts = [text_tokenizer.decode(ids) for ids in item.ids]
        decoded.append(item)
    return decoded


def _unnormalised_rgb(pixels: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * std + mean).clamp(0, 1).cpu()


def _shown(item: DecodedModality) -> tuple[str, Tensor | list[str]]:
    """How a decoded modality is shown: ``(view, values)`` of its grid column."""
    if item.images is not None:
        return item.view, item.images
    if item.texts is not None:
        return ("det" if item.name.partition("@")[0] == "det" else "text"), item.texts
    return "text", [f"{len(ids)} tokens: {ids[:24]}" for ids in item.ids]


def generation_columns(
    decoded: Sequence[DecodedModality],
    targets: Sequence[str],
    cond_domains: Sequence[str],
    truths: Sequence[DecodedModality] = (),
) -> list[Column]:
    """The grid of a chained generation: the inputs, then each target of ``targets`` (in generation order)
    predicted from ``cond_domains`` and the targets before it, followed by its ground truth when ``truths`` (the
    conditioning samples' own values, decoded alike) hold it."""
    by_name = {item.name: item for item in decoded}
    truth_by_name = {item.name: item for item in truths}
    columns = [Column(input_title(item.name), *_shown(item)) for item in decoded if not item.generated]
    for index, name in enumerate(targets):
        view, predicted = _shown(by_name[name])
        truth = truth_by_name.get(name)
        columns += prediction_columns(
            name,
            [*cond_domains, *targets[:index]],
            view,
            predicted,
            None if truth is None else _shown(truth)[1],
            truth_is_tokens=name.startswith(TOKEN_PREFIX),
        )
    return columns


def _num_samples(decoded: Sequence[DecodedModality]) -> int:
    return max(len(item.images) if item.images is not None else len(item.ids) for item in decoded)


def generations_record(decoded: Sequence[DecodedModality], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON-ready ``{"samples": [{modality: {"generated", "ids", "text"?}}], **extra}`` (pixel inputs omitted)."""
    samples = []
    for row in range(_num_samples(decoded)):
        sample = {}
        for item in decoded:
            if not item.ids:
                continue
            sample[item.name] = {"generated": item.generated, "ids": item.ids[row]}
            if item.texts is not None:
                sample[item.name]["text"] = item.texts[row]
        samples.append(sample)
    return {**(extra or {}), "samples": samples}


def write_generation_json(path: str | Path, record: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
