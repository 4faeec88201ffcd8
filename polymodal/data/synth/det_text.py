"""Detection boxes as 4M's det string: ``"v0=x0 v1=y0 v2=x1 v3=y1 name v0=... name"``.

Format (4M ``DetectionTransform(bbox_order='dist_to_orig', coord_bins=1000)``):

* each coordinate is divided by the image width (x) or height (y) and mapped to a bin
  ``floor(c * (bins - 1) + 0.5)``, i.e. ``round(c * 999)`` with halves rounded up (not to even),
  so the right/bottom image edge is bin ``bins - 1``;
* objects are ordered by the distance of their normalised top-left corner ``(x0, y0)`` to the image
  origin, nearest first; ties keep the input order;
* there are no scores here (4M keeps detections with score >= 0.6; synthetic boxes are ground truth).

:func:`text_to_det` reads such a string back (a generated one too) into class names and pixel boxes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from polymodal.data.synth.scene import SHAPES
from polymodal.tokenizers.text.wordpiece import coord_token

_COORD = re.compile(r"^v([0-3])=(\d+)$")


@dataclass(frozen=True)
class DetObject:
    """One object of a det string: its class name and ``(x0, y0, x1, y1)`` box in pixels."""

    name: str
    box: tuple[float, float, float, float]

    def __str__(self) -> str:
        """``cube (12,20)-(30,45)``: the class and the box corners in whole pixels."""
        x0, y0, x1, y1 = (round(c) for c in self.box)
        return f"{self.name} ({x0},{y0})-({x1},{y1})"


def _image_height_width(image_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return height, width


def _label_name(label: int | str, class_names: Sequence[str]) -> str:
    if isinstance(label, str):
        if not label.strip() or label != label.strip():
            raise ValueError(f"class name {label!r} must be non-empty without surrounding whitespace")
        return label
    if not 1 <= label <= len(class_names):
        raise ValueError(f"class id {label} is outside 1..{len(class_names)} (class id = index in class_names + 1)")
    return class_names[label - 1]


def _bin(normalised: float, bins: int) -> int:
    return math.floor(normalised * (bins - 1) + 0.5)


def det_to_text(
    boxes: torch.Tensor | Sequence[Sequence[float]],
    labels: torch.Tensor | Sequence[int | str],
    image_size: int | tuple[int, int],
    bins: int = 1000,
    class_names: Sequence[str] = SHAPES,
) -> str:
    """4M's det string of xyxy pixel ``boxes``; ``image_size`` is a side or ``(height, width)``.

    ``labels`` are class names, or synthetic class ids as ``render_scene`` returns them
    (``class_names[id - 1]``). No boxes give ``""``.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    height, width = _image_height_width(image_size)
    box_tensor = torch.as_tensor(boxes, dtype=torch.float64)
    if box_tensor.numel() == 0:
        box_tensor = box_tensor.reshape(0, 4)
    if box_tensor.ndim != 2 or box_tensor.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) (xyxy pixels), got {tuple(box_tensor.shape)}")
    box_rows = box_tensor.tolist()
    label_list = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(box_rows) != len(label_list):
        raise ValueError(f"got {len(box_rows)} boxes but {len(label_list)} labels")
    objects = []
    for index, ((x0, y0, x1, y1), label) in enumerate(zip(box_rows, label_list, strict=True)):
        if not all(math.isfinite(c) for c in (x0, y0, x1, y1)):
            raise ValueError(f"box {index} has a non-finite coordinate: {[x0, y0, x1, y1]}")
        if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
            raise ValueError(
                f"box {index} {[x0, y0, x1, y1]} is not an xyxy box inside the {width}x{height} (WxH) image"
            )
        corner = (x0 / width, y0 / height, x1 / width, y1 / height)
        objects.append((math.hypot(corner[0], corner[1]), corner, _label_name(label, class_names)))
    objects.sort(key=lambda obj: obj[0])
    return " ".join(
        " ".join([*(coord_token(axis, _bin(c, bins)) for axis, c in enumerate(corner)), name])
        for _, corner, name in objects
    )


def text_to_det(text: str, image_size: int | tuple[int, int], bins: int = 1000) -> list[DetObject]:
    """The objects of a det string (:func:`det_to_text`'s inverse), boxes in pixels of an image of ``image_size``
    (a side or ``(height, width)``): bin ``n`` is ``n / (bins - 1)`` of the side. Words that do not make an object
    (a coordinate missing or out of range, a box with no area, a stray word) are skipped."""
    height, width = _image_height_width(image_size)
    objects, coords = [], {}
    for word in text.split():
        match = _COORD.match(word)
        if match:
            coords[int(match.group(1))] = int(match.group(2))
            continue
        if len(coords) == 4 and max(coords.values()) < bins:
            x0, y0, x1, y1 = (coords[axis] * side / (bins - 1) for axis, side in enumerate((width, height) * 2))
            if x1 > x0 and y1 > y0:
                objects.append(DetObject(word, (x0, y0, x1, y1)))
        coords = {}
    return objects
