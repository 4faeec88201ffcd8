import pytest
import torch

from polymodal.data.synth.held_out import HELD_OUT_SEED, held_out_scenes


def test_held_out_scenes_are_natural_units():
    rgb = held_out_scenes("rgb", 2, size=16)
    assert rgb.dtype == torch.float32 and rgb.shape == (2, 3, 16, 16) and 0 <= rgb.min() and rgb.max() <= 1
    semseg = held_out_scenes("semseg", 2, size=16, seed=HELD_OUT_SEED + 1)
    assert semseg.dtype == torch.int64 and semseg.shape == (2, 16, 16)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="unknown image modality 'edges'"):
        held_out_scenes("edges", 2)
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        held_out_scenes("rgb", 0)
