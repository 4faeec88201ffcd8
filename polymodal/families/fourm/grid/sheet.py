"""A 4M picture grid as one PNG: a header of column titles (with the depth colour bar over depth columns), then one
row per sample, every panel with its key under it.

Depth panels share one colour scale, the nearest to the farthest depth in the grid, so a prediction and its ground
truth can be compared by colour; det boxes are drawn on the row's first rgb panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from polymodal.colourmaps import depth_range
from polymodal.families.fourm.grid.columns import Column
from polymodal.families.fourm.grid.panels import (
    CELL,
    DEPTH_BAR,
    KEY_LINES,
    LINE,
    column_panel,
    draw_depth_bar,
    draw_key,
    font,
    wrap,
)
from polymodal.tokenizers.image.evaluate import to_viewable_rgb

PAD = 6
TITLE_LINES = 3
KEYED_VIEWS = ("semseg", "det")


def _rgb_background(columns: Sequence[Column], row: int) -> np.ndarray | None:
    """The row's first rgb image (uint8 [H, W, 3]), what det boxes are drawn on."""
    rgb = next((column for column in columns if column.view == "rgb"), None)
    return None if rgb is None else to_viewable_rgb(rgb.values[row], "rgb")


def write_grid_png(path: str | Path, columns: Sequence[Column]) -> Path:
    """Draw ``columns`` (each with the same number of rows) as a grid at ``path``."""
    if not columns:
        raise ValueError("nothing to draw: no column")
    if len({len(column) for column in columns}) != 1:
        raise ValueError(f"the columns have different numbers of rows: {[(c.title, len(c)) for c in columns]}")
    rows = len(columns[0])
    typeface = font()
    depths = [image for column in columns if column.view == "depth" for image in column.values]
    near_far = depth_range(depths) if depths else None
    titles = [wrap(column.title, CELL - 4, typeface)[:TITLE_LINES] for column in columns]
    bar_top = PAD + max(len(title) for title in titles) * LINE
    header = bar_top + (DEPTH_BAR + LINE + PAD if near_far else 0)
    key_height = KEY_LINES * LINE + 4 if any(column.view in KEYED_VIEWS for column in columns) else 0
    row_height = CELL + key_height + PAD
    sheet = Image.new("RGB", (PAD + len(columns) * (CELL + PAD), header + rows * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (column, title) in enumerate(zip(columns, titles, strict=True)):
        left = PAD + index * (CELL + PAD)
        for line, content in enumerate(title):
            draw.text((left + 2, PAD + line * LINE), content, fill=(0, 0, 0), font=typeface)
        if column.view == "depth":
            draw_depth_bar(sheet, near_far, left, bar_top, typeface)
    for row in range(rows):
        top = header + row * row_height
        background = _rgb_background(columns, row)
        for index, column in enumerate(columns):
            left = PAD + index * (CELL + PAD)
            panel = column_panel(column, row, background, near_far, typeface)
            sheet.paste(panel.image, (left, top))
            draw_key(draw, panel.key, left, top + CELL + 3, typeface)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
