"""A whole grid: depth panels on one colour scale with its bar in the header, keys drawn under the panels."""

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.colourmaps import SEMSEG_COLOURS, depth_ramp, depth_to_rgb
from polymodal.families.fourm.grid.columns import Column
from polymodal.families.fourm.grid.panels import CELL, KEY_LINES, LINE
from polymodal.families.fourm.grid.sheet import PAD, write_grid_png


def _colours(image: Image.Image, box) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in p) for p in np.asarray(image.convert("RGB").crop(box)).reshape(-1, 3)}


def test_depth_columns_share_one_scale_and_show_its_colour_bar(tmp_path):
    near_map = torch.full((1, 1, 8, 8), 2.0)
    wide_map = torch.linspace(1.0, 20.0, 64).reshape(1, 1, 8, 8)
    columns = [Column("depth predicted from rgb", "depth", near_map), Column("depth (ground truth)", "depth", wide_map)]
    with Image.open(write_grid_png(tmp_path / "grid.png", columns)) as image:
        header = 2 * PAD + LINE + 8 + LINE  # one title line, the bar and its labels
        top = image.height - CELL - PAD
        assert image.height == header + CELL + PAD
        first_panel = _colours(image, (PAD, top, PAD + CELL, top + CELL))
        assert first_panel == {tuple(int(c) for c in depth_to_rgb(near_map[0], (1.0, 20.0))[0, 0])}
        bar = np.asarray(image.convert("RGB"))[PAD + LINE + 2, PAD : PAD + CELL]
        assert (bar == depth_ramp(CELL)).all()  # near (bright) on the left to far (dark) on the right


def test_semseg_key_is_drawn_under_its_panel(tmp_path):
    semseg = torch.zeros(1, 8, 8, dtype=torch.long)
    semseg[0, :4] = 2  # cube
    png = write_grid_png(tmp_path / "grid.png", [Column("semseg (ground truth)", "semseg", semseg)])
    with Image.open(png) as image:
        top = image.height - PAD - KEY_LINES * LINE - 4
        key = _colours(image, (PAD, top, PAD + CELL, image.height))
    assert tuple(int(c) for c in SEMSEG_COLOURS[2]) in key and tuple(int(c) for c in SEMSEG_COLOURS[1]) not in key


def test_columns_must_have_the_same_rows(tmp_path):
    with pytest.raises(ValueError, match="different numbers of rows"):
        write_grid_png(tmp_path / "grid.png", [Column("a", "text", ["x"]), Column("b", "text", ["x", "y"])])
    with pytest.raises(ValueError, match="no column"):
        write_grid_png(tmp_path / "grid.png", [])
