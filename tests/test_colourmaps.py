"""Depth colours on a given scale, so maps shown side by side can be compared, and the ramp of the colour bar."""

import numpy as np
import pytest
import torch

from polymodal.colourmaps import depth_ramp, depth_range, depth_to_rgb


def test_depth_on_a_shared_scale_runs_from_the_first_to_the_last_colour_of_the_ramp():
    depth = torch.tensor([[[1.0, 20.0], [0.5, 40.0]]])  # the last two lie outside the scale: clamped
    colours = depth_to_rgb(depth, (1.0, 20.0))
    ramp = depth_ramp(5)
    assert (colours[0, 0] == ramp[0]).all() and (colours[1, 0] == ramp[0]).all()  # near (and nearer): bright
    assert (colours[0, 1] == ramp[-1]).all() and (colours[1, 1] == ramp[-1]).all()  # far (and farther): dark
    assert ramp[0].sum() > ramp[-1].sum()


def test_a_map_alone_spans_its_own_range_and_several_maps_share_theirs():
    near, far = torch.full((1, 2, 2), 2.0), torch.tensor([[[2.0, 4.0], [8.0, 16.0]]])
    assert depth_range([near, far]) == (2.0, 16.0)
    assert (depth_to_rgb(far) == depth_to_rgb(far, (2.0, 16.0))).all()
    assert not np.array_equal(depth_to_rgb(far[:, :1]), depth_to_rgb(far[:, :1], depth_range([near, far])))
    with pytest.raises(ValueError, match="at least one"):
        depth_range([])
