import pytest

from polymodal.data.synth.captions import describe_scene
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import NUMBER_WORDS, PALETTE, SceneObject


def _obj(shape, colour, size, z=0.0):
    return SceneObject(shape, colour, size, 0.0, z, 0.0)


def test_grouping_relations_and_counts():
    objects = [_obj("cube", "red", "small", z=1.0), _obj("sphere", "blue", "large"), _obj("sphere", "blue", "large")]
    boxes = [[0, 0, 4, 4], [10, 0, 14, 4], [20, 0, 24, 4]]
    captions = describe_scene(objects, boxes)
    assert captions[0] == "three objects on a checkered floor: a small red cube and two large blue spheres"
    assert captions[1] == "from left to right, a small red cube, a large blue sphere and a large blue sphere"
    assert captions[2] == "a small red cube left of two large blue spheres"
    assert captions[3].startswith("a small red cube in front of a large blue sphere")


def test_single_object():
    captions = describe_scene([_obj("cone", "green", "small")], [[0, 0, 5, 5]])
    assert all("green cone" in c for c in captions) and captions[0].startswith("one object")


def test_mismatched_boxes_rejected():
    with pytest.raises(ValueError, match="one box per object"):
        describe_scene([_obj("cone", "green", "small")], [])


@pytest.mark.parametrize("index", range(10))
def test_rendered_captions_mention_count_and_colours(index):
    sample = render_scene(7, index)
    count = len(sample["det"]["labels"])
    first = sample["caption"][0]
    assert first.startswith(NUMBER_WORDS[count] + (" objects" if count > 1 else " object"))
    mentioned = set(PALETTE) & set(first.replace(",", " ").split())  # whole words: "red" is inside "checkered"
    listed = set(PALETTE) & set(sample["caption"][1].replace(",", " ").split())
    assert mentioned == listed and 1 <= len(mentioned) <= count
