"""Generations for people: token grids decoded to images by their tokenizers, sequences decoded to text, a PNG
grid (one row per sample, one column per modality) and a JSON file of texts and token ids.

Image columns are colour-mapped like the synthetic data previews (depth through 'magma' on inverse depth, semseg
with the class palette, normals as ``(n + 1) / 2``); pixel inputs are un-normalised from ImageNet statistics. Text
columns are written into their cell; a ``det`` column is drawn as boxes (with class names) on the first rgb column
of the row, its text underneath.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from tokenizers import Tokenizer
from torch import Tensor

from polymodal.colourmaps import SEMSEG_COLOURS
from polymodal.families.fourm.generate.inputs import Entry, row_inputs
from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.families.fourm.samples import IMAGENET_MEAN, IMAGENET_STD
from polymodal.tokenizers.image.evaluate import to_viewable_rgb
from polymodal.tokenizers.image.tokenizer import ImageTokenizer
from polymodal.tokenizers.text.wordpiece import DEFAULT_LAYOUT, WordPieceLayout

CELL = 160
PAD = 6
HEADER = 22
TEXT_LINES = 4
FONT_SIZE = 12
_COORD = re.compile(r"^v([0-3])=(\d+)$")


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


def parse_det_text(text: str, layout: WordPieceLayout = DEFAULT_LAYOUT) -> list[tuple[str, tuple[float, ...]]]:
    """``(class name, (x0, y0, x1, y1) in [0, 1])`` per object of a det string (``v0=.. v1=.. v2=.. v3=.. name``);
    malformed objects (a coordinate missing, a box with no area) are skipped."""
    objects, coords = [], {}
    for word in text.split():
        match = _COORD.match(word)
        if match:
            coords[int(match.group(1))] = int(match.group(2)) / (layout.coord_bins - 1)
            continue
        if len(coords) == 4:
            box = tuple(coords[axis] for axis in range(4))
            if box[2] > box[0] and box[3] > box[1]:
                objects.append((word, box))
        coords = {}
    return objects


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _image_cell(image: Tensor, view: str) -> Image.Image:
    return Image.fromarray(to_viewable_rgb(image, view)).resize((CELL, CELL), Image.NEAREST)


def _text_cell(text: str, font: ImageFont.ImageFont, lines: int = CELL // (FONT_SIZE + 3)) -> Image.Image:
    cell = Image.new("RGB", (CELL, CELL), (245, 245, 245))
    draw = ImageDraw.Draw(cell)
    wrapped = textwrap.wrap(text or "(empty)", width=CELL // 7)[:lines]
    for line, content in enumerate(wrapped):
        draw.text((4, 4 + line * (FONT_SIZE + 3)), content, fill=(20, 20, 20), font=font)
    return cell


def _det_cell(background: Image.Image | None, text: str, font: ImageFont.ImageFont) -> Image.Image:
    if background is None:
        return _text_cell(text, font)
    cell = background.copy()
    draw = ImageDraw.Draw(cell)
    names = sorted({name for name, _ in parse_det_text(text)})
    for name, (x0, y0, x1, y1) in parse_det_text(text):
        colour = tuple(int(c) for c in SEMSEG_COLOURS[1 + names.index(name) % (len(SEMSEG_COLOURS) - 1)])
        draw.rectangle([x0 * CELL, y0 * CELL, x1 * CELL - 1, y1 * CELL - 1], outline=colour, width=2)
        draw.text((x0 * CELL + 2, y0 * CELL + 1), name, fill=colour, font=font)
    return cell


def _row_cells(decoded: Sequence[DecodedModality], row: int, font: ImageFont.ImageFont) -> tuple[list, list[str]]:
    """The cells of one sample and the texts written under them."""
    rgb = next((_image_cell(d.images[row], "rgb") for d in decoded if d.images is not None and d.view == "rgb"), None)
    cells, notes = [], []
    for item in decoded:
        if item.images is not None:
            cells.append(_image_cell(item.images[row], item.view))
            notes.append("")
        elif item.texts is not None and item.name.partition("@")[0] == "det":
            cells.append(_det_cell(rgb, item.texts[row], font))
            notes.append(item.texts[row])
        elif item.texts is not None:
            cells.append(_text_cell(item.texts[row], font))
            notes.append("")
        else:
            cells.append(_text_cell(f"{len(item.ids[row])} tokens: {item.ids[row][:24]}", font))
            notes.append("")
    return cells, notes


def _num_samples(decoded: Sequence[DecodedModality]) -> int:
    return max(len(item.images) if item.images is not None else len(item.ids) for item in decoded)


def write_generation_png(path: str | Path, decoded: Sequence[DecodedModality]) -> Path:
    """The grid: a header of modality names (``*`` = generated), one row per sample."""
    if not decoded:
        raise ValueError("nothing to draw: no decoded modality")
    font = _font()
    rows = _num_samples(decoded)
    note_height = TEXT_LINES * (FONT_SIZE + 3)
    row_height = CELL + note_height + PAD
    width = len(decoded) * (CELL + PAD) + PAD
    sheet = Image.new("RGB", (width, HEADER + rows * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, item in enumerate(decoded):
        title = f"{item.name}{' *' if item.generated else ''}"
        draw.text((PAD + column * (CELL + PAD) + 2, 4), title, fill=(0, 0, 0), font=font)
    for row in range(rows):
        top = HEADER + row * row_height
        cells, notes = _row_cells(decoded, row, font)
        for column, (cell, note) in enumerate(zip(cells, notes, strict=True)):
            left = PAD + column * (CELL + PAD)
            sheet.paste(cell, (left, top))
            for line, content in enumerate(textwrap.wrap(note, width=CELL // 7)[:TEXT_LINES]):
                draw.text((left, top + CELL + 2 + line * (FONT_SIZE + 3)), content, fill=(40, 40, 40), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


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
