"""Panels that explain themselves: the semseg classes shown, det boxes decoded to class names and pixels."""

import numpy as np
import torch

from polymodal.colourmaps import SEMSEG_COLOURS
from polymodal.data.synth.scene import SEMSEG_CLASSES
from polymodal.families.fourm.grid.panels import (
    CELL,
    KeyEntry,
    det_panel,
    fitted,
    font,
    image_panel,
    semseg_key,
    wrap,
)


def test_semseg_key_lists_exactly_the_classes_present():
    semseg = torch.zeros(8, 8, dtype=torch.long)
    semseg[2:4, 2:4] = SEMSEG_CLASSES.index("cube")
    semseg[5, 5] = SEMSEG_CLASSES.index("cone")
    key = image_panel(semseg, "semseg", None).key
    assert [entry.label for entry in key] == ["background", "cube", "cone"]
    assert [entry.colour for entry in key] == [tuple(int(c) for c in SEMSEG_COLOURS[i]) for i in (0, 2, 4)]
    assert semseg_key(torch.full((4, 4), 1)) == [KeyEntry(tuple(int(c) for c in SEMSEG_COLOURS[1]), "sphere")]
    assert image_panel(torch.rand(3, 8, 8), "rgb", None).key == []


def test_det_is_drawn_as_named_boxes_and_listed_in_pixels_not_tokens():
    background = np.zeros((64, 64, 3), dtype=np.uint8)
    text = "v0=0 v1=0 v2=499 v3=999 cube v0=10 v1=10 v2=5 v3=20 cone v0=3 sphere"
    panel = det_panel(text, background, font())
    cube = tuple(int(c) for c in SEMSEG_COLOURS[SEMSEG_CLASSES.index("cube")])
    assert panel.key == [KeyEntry(cube, "cube (0,0)-(32,64)")]  # the boxless cone and the broken sphere left out
    pixels = np.asarray(panel.image)
    assert panel.image.size == (CELL, CELL)
    middle_row = [tuple(int(v) for v in pixel) for pixel in pixels[CELL // 2]]
    assert middle_row[0] == cube and cube in middle_row[CELL // 2 - 4 : CELL // 2]  # the box's left and right sides
    assert set(middle_row[CELL // 2 :]) == {(0, 0, 0)}  # right of the box: the background
    assert det_panel("", None, font()).key == [KeyEntry(None, "(no object)")]


def test_keys_that_do_not_fit_end_with_a_count():
    entries = [KeyEntry(None, str(i)) for i in range(7)]
    assert [e.label for e in fitted(entries, 5)] == ["0", "1", "2", "3", "+3 more"]
    assert fitted(entries[:5], 5) == entries[:5]


def test_wrap_keeps_lines_within_the_width():
    typeface = font()
    lines = wrap("det predicted from rgb, depth, normal, semseg, caption", CELL - 4, typeface)
    assert len(lines) > 1 and all(typeface.getlength(line) <= CELL - 4 for line in lines)
    assert " ".join(lines) == "det predicted from rgb, depth, normal, semseg, caption"
