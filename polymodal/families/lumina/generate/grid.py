"""A PNG sheet of generations: each image fitted into a square cell (aspect kept; small images enlarged without
smoothing, so codes stay visible) with its text wrapped under it, ``per_row`` cells per row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from polymodal.files import atomic_output

CELL = 192
PAD = 8
FONT_SIZE = 12
LINE = FONT_SIZE + 3
TEXT_LINES = 4


def _wrapped(text: str, width: float, font: ImageFont.ImageFont) -> list[str]:
    """``text`` in at most :data:`TEXT_LINES` lines no wider than ``width`` px (a longer word gets a line of its
    own; what does not fit ends in an ellipsis)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > TEXT_LINES:
        lines = [*lines[: TEXT_LINES - 1], lines[TEXT_LINES - 1] + " …"]
    return lines


def _fitted(image: Image.Image) -> Image.Image:
    scale = CELL / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)


def write_sheet(path: str | Path, images: Sequence[Image.Image], texts: Sequence[str], per_row: int) -> Path:
    """Draw ``images`` (RGB) with ``texts`` under them at ``path``, ``per_row`` to a row."""
    if not images or len(images) != len(texts):
        raise ValueError(f"a sheet needs images with one text each, got {len(images)} images and {len(texts)} texts")
    font = ImageFont.load_default(size=FONT_SIZE)
    columns = max(1, min(per_row, len(images)))
    rows = -(-len(images) // columns)
    cell_height = CELL + PAD + TEXT_LINES * LINE
    sheet = Image.new("RGB", (PAD + columns * (CELL + PAD), PAD + rows * (cell_height + PAD)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (image, text) in enumerate(zip(images, texts, strict=True)):
        left = PAD + (index % columns) * (CELL + PAD)
        top = PAD + (index // columns) * (cell_height + PAD)
        fitted = _fitted(image)
        sheet.paste(fitted, (left + (CELL - fitted.width) // 2, top + (CELL - fitted.height) // 2))
        for line_index, line in enumerate(_wrapped(text, CELL, font)):
            draw.text((left, top + CELL + PAD + line_index * LINE), line, fill=(20, 20, 20), font=font)
    with atomic_output(path) as staged:
        sheet.save(staged, format="PNG")
    return Path(path)
