import numpy as np
import pytest

from polymodal.data.synth.scene import CLASS_NAMES, MAX_OBJECTS, sample_scene


def test_sampling_is_a_pure_function_of_seed_index_attempt():
    assert sample_scene(1, 2) == sample_scene(1, 2)
    assert sample_scene(1, 2) != sample_scene(1, 3)
    assert sample_scene(1, 2) != sample_scene(1, 2, attempt=1)


@pytest.mark.parametrize("index", range(30))
def test_objects_do_not_overlap_and_count_in_range(index):
    objects = sample_scene(0, index).objects
    assert 1 <= len(objects) <= MAX_OBJECTS
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            assert np.hypot(a.x - b.x, a.z - b.z) > a.footprint + b.footprint


def test_class_names():
    assert CLASS_NAMES == ["one object", "two objects", "three objects", "four objects", "five objects"]


def test_negative_index_rejected():
    with pytest.raises(ValueError, match="index"):
        sample_scene(0, -5)
