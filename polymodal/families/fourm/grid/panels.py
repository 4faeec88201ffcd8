"""The panels of a 4M picture grid, drawn with PIL, each with the key that explains it: an image (under a semseg map
the classes it shows, swatch and name), a text, a det string drawn as boxes with class names on the row's rgb (its
objects listed under it as ``cube (x0,y0)-(x1,y1)`` in pixels), and the depth colour bar of a column's header."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from polymodal.colourmaps import SEMSEG_COLOURS, depth_ramp
from polymodal.data.synth.det_text import text_to_det
from polymodal.data.synth.scene import SEMSEG_CLASSES
from polymodal.families.fourm.grid.columns import Column
from polymodal.tokenizers.image.evaluate import to_viewable_rgb

CELL = 160
FONT_SIZE = 12
LINE = FONT_SIZE + 3
KEY_LINES = 5  # under a panel: the semseg classes, the det objects
SWATCH = 10
TEXT_COLOUR = (20, 20, 20)
BLANK = (245, 245, 245)
UNKNOWN_CLASS_COLOUR = (255, 255, 255)
DEPTH_BAR = 8  # pixels high, then a line of labels
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class KeyEntry:
    """One line of a panel's key: a colour swatch (None: no swatch) and its label."""

    colour: Colour | None
    label: str


@dataclass
class Panel:
    """A ``CELL`` x ``CELL`` picture and the key lines written under it."""

    image: Image.Image
    key: list[KeyEntry] = field(default_factory=list)


def font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def wrap(text: str, width: float, typeface: ImageFont.ImageFont) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a longer word gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and typeface.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def semseg_class_name(class_id: int) -> str:
    return SEMSEG_CLASSES[class_id] if 0 <= class_id < len(SEMSEG_CLASSES) else f"class {class_id}"


def class_colour(name: str) -> Colour:
    """The semseg colour of a class name, so boxes and semseg maps agree (white for a name not in the list)."""
    if name not in SEMSEG_CLASSES:
        return UNKNOWN_CLASS_COLOUR
    return tuple(int(c) for c in SEMSEG_COLOURS[SEMSEG_CLASSES.index(name)])


def fitted(entries: Sequence[KeyEntry], lines: int = KEY_LINES) -> list[KeyEntry]:
    """``entries``, the last lines replaced by ``+N more`` when they do not fit in ``lines``."""
    if len(entries) <= lines:
        return list(entries)
    return [*entries[: lines - 1], KeyEntry(None, f"+{len(entries) - lines + 1} more")]


def semseg_key(semseg: Tensor) -> list[KeyEntry]:
    """A swatch and the name of each class the map shows, by class id."""
    return [
        KeyEntry(tuple(int(c) for c in SEMSEG_COLOURS[class_id]), semseg_class_name(class_id))
        for class_id in torch.unique(semseg).tolist()
    ]


def image_panel(image: Tensor, view: str, near_far: tuple[float, float] | None) -> Panel:
    """An image of ``view`` scaled to the cell; depth coloured on the grid's ``near_far`` scale."""
    cell = Image.fromarray(to_viewable_rgb(image, view, near_far)).resize((CELL, CELL), Image.NEAREST)
    return Panel(cell, semseg_key(image) if view == "semseg" else [])


def text_panel(text: str, typeface: ImageFont.ImageFont) -> Panel:
    cell = Image.new("RGB", (CELL, CELL), BLANK)
    draw = ImageDraw.Draw(cell)
    for line, content in enumerate(wrap(text or "(empty)", CELL - 8, typeface)[: CELL // LINE]):
        draw.text((4, 4 + line * LINE), content, fill=TEXT_COLOUR, font=typeface)
    return Panel(cell)


def det_panel(text: str, background: np.ndarray | None, typeface: ImageFont.ImageFont) -> Panel:
    """The objects of a det string as boxes with class names on ``background`` (uint8 [H, W, 3], the row's rgb;
    None: a blank cell, the boxes in its pixels) and listed under it with their corners in its pixels."""
    if background is None:
        background = np.full((CELL, CELL, 3), BLANK, dtype=np.uint8)
    height, width = background.shape[:2]
    cell = Image.fromarray(background).resize((CELL, CELL), Image.NEAREST)
    draw = ImageDraw.Draw(cell)
    objects = text_to_det(text, (height, width))
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        corners = [x0 * CELL / width, y0 * CELL / height, x1 * CELL / width - 1, y1 * CELL / height - 1]
        colour = class_colour(obj.name)
        draw.rectangle(corners, outline=colour, width=2)
        tag = draw.textbbox((corners[0], corners[1]), obj.name, font=typeface)
        draw.rectangle([tag[0], tag[1], tag[2] + 2, tag[3] + 1], fill=colour)
        draw.text((corners[0] + 1, corners[1]), obj.name, fill=TEXT_COLOUR, font=typeface)
    key = [KeyEntry(class_colour(obj.name), str(obj)) for obj in objects] or [KeyEntry(None, "(no object)")]
    return Panel(cell, key)


def column_panel(
    column: Column,
    row: int,
    background: np.ndarray | None,
    near_far: tuple[float, float] | None,
    typeface: ImageFont.ImageFont,
) -> Panel:
    """The panel of ``column`` in ``row``."""
    value = column.values[row]
    if column.view == "text":
        return text_panel(value, typeface)
    if column.view == "det":
        return det_panel(value, background, typeface)
    return image_panel(value, column.view, near_far)


def draw_key(
    draw: ImageDraw.ImageDraw, entries: Sequence[KeyEntry], left: int, top: int, typeface: ImageFont.ImageFont
) -> None:
    """``entries`` one a line from ``(left, top)``, each after its swatch."""
    for line, entry in enumerate(fitted(entries)):
        y = top + line * LINE
        if entry.colour is not None:
            draw.rectangle([left, y + 2, left + SWATCH - 1, y + 1 + SWATCH], fill=entry.colour, outline=(0, 0, 0))
        draw.text((left + SWATCH + 4, y), entry.label, fill=TEXT_COLOUR, font=typeface)


def _metres(value: float) -> str:
    return f"{value:.1f} m" if value < 10 else f"{value:.0f} m"


def draw_depth_bar(
    sheet: Image.Image, near_far: tuple[float, float], left: int, top: int, typeface: ImageFont.ImageFont
) -> None:
    """The colours of the depth scale from near (left) to far (right), the two depths in metres under it."""
    ramp = np.repeat(depth_ramp(CELL)[None], DEPTH_BAR, axis=0)
    sheet.paste(Image.fromarray(ramp), (left, top))
    draw = ImageDraw.Draw(sheet)
    near, far = (f"near {_metres(near_far[0])}", f"far {_metres(near_far[1])}")
    draw.text((left, top + DEPTH_BAR + 1), near, fill=TEXT_COLOUR, font=typeface)
    draw.text((left + CELL - typeface.getlength(far), top + DEPTH_BAR + 1), far, fill=TEXT_COLOUR, font=typeface)
