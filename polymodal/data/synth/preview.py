"""A contact sheet of scenes: one row per scene, one column per modality, the first caption under each row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from polymodal.colourmaps import SEMSEG_COLOURS, depth_to_rgb, normal_to_rgb, semseg_to_rgb
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import SHAPES

COLUMNS = ("rgb", "det", "depth", "normal", "semseg", "edges")
_CELL = 160
_PAD = 6
_HEADER = 24
_CAPTION = 22
_FONT_SIZE = 14


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=_FONT_SIZE)


def _rgb_image(sample: dict) -> Image.Image:
    return Image.fromarray(sample["rgb"].permute(1, 2, 0).numpy())


def _det_cell(sample: dict, size: int) -> Image.Image:
    cell = _rgb_image(sample).resize((_CELL, _CELL), Image.NEAREST)
    draw = ImageDraw.Draw(cell)
    scale = _CELL / size
    for box, label in zip(sample["det"]["boxes"].tolist(), sample["det"]["labels"].tolist(), strict=True):
        corners = [box[0] * scale, box[1] * scale, box[2] * scale - 1, box[3] * scale - 1]
        draw.rectangle(corners, outline=tuple(int(c) for c in SEMSEG_COLOURS[label]), width=2)
    return cell


def _modality_cells(sample: dict, size: int) -> list[Image.Image]:
    arrays = {
        "rgb": sample["rgb"].permute(1, 2, 0).numpy(),
        "depth": depth_to_rgb(sample["depth"]),
        "normal": normal_to_rgb(sample["normal"]),
        "semseg": semseg_to_rgb(sample["semseg"]),
        "edges": np.repeat(sample["edges"][0].numpy()[..., None], 3, axis=2),
    }
    cells = []
    for column in COLUMNS:
        if column == "det":
            cells.append(_det_cell(sample, size))
        else:
            cells.append(Image.fromarray(arrays[column]).resize((_CELL, _CELL), Image.NEAREST))
    return cells


def write_preview(path: str | Path, seed: int, indices: list[int], size: int = 64) -> Path:
    """Render ``indices`` and save the grid as a PNG at ``path``."""
    if not indices:
        raise ValueError("preview needs at least one scene index")
    font = _font()
    row_height = _CELL + _CAPTION + _PAD
    width = len(COLUMNS) * (_CELL + _PAD) + _PAD
    sheet = Image.new("RGB", (width, _HEADER + len(indices) * row_height + _CAPTION), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for col, name in enumerate(COLUMNS):
        draw.text((_PAD + col * (_CELL + _PAD) + 4, 4), name, fill=(0, 0, 0), font=font)
    for row, index in enumerate(indices):
        sample = render_scene(seed, index, size)
        top = _HEADER + row * row_height
        for col, cell in enumerate(_modality_cells(sample, size)):
            sheet.paste(cell, (_PAD + col * (_CELL + _PAD), top))
        caption = f"#{index} (label {int(sample['label'])}): {sample['caption'][0]}"
        draw.text((_PAD, top + _CELL + 3), caption, fill=(20, 20, 20), font=font)
    legend_top = _HEADER + len(indices) * row_height
    draw.text((_PAD, legend_top), "det boxes and semseg share the class colours:", fill=(0, 0, 0), font=font)
    x = _PAD + draw.textlength("det boxes and semseg share the class colours:  ", font=font)
    for class_id, name in enumerate(("ground", *SHAPES)):
        colour = tuple(int(c) for c in SEMSEG_COLOURS[class_id])
        draw.rectangle([x, legend_top + 2, x + 12, legend_top + 14], fill=colour)
        draw.text((x + 16, legend_top), name, fill=(0, 0, 0), font=font)
        x += 24 + draw.textlength(name, font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
