import io
import json
import re
import tarfile
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.synth import twins
from polymodal.data.synth.labels import largest_visible
from polymodal.data.synth.render import render_scene, visible_scene
from polymodal.data.synth.twins import render_scene_with_twin, shape_twin
from polymodal.data.synth.writers import MODALITY_EXTENSIONS, write_shards

OBJECT_PHRASE = re.compile(r"a (small|large) (\w+) (sphere|cube|cylinder|cone)")
INDICES = range(24)


def _objects_named(caption: str) -> Counter:
    return Counter(OBJECT_PHRASE.findall(caption))


def _changed(scene, twin) -> list[int]:
    assert len(scene.objects) == len(twin.objects)
    return [i for i, (a, b) in enumerate(zip(scene.objects, twin.objects, strict=True)) if a != b]


@pytest.mark.parametrize("index", INDICES)
def test_a_twin_differs_from_its_scene_in_one_objects_shape_and_nothing_else(index):
    scene, hits, boxes = visible_scene(5, index, 64)
    twin, twin_hits, twin_boxes = shape_twin(scene, hits, boxes, 64, np.random.default_rng(index))
    (changed,) = _changed(scene, twin)
    before, after = scene.objects[changed], twin.objects[changed]
    assert before.shape != after.shape and replace(after, shape=before.shape) == before
    assert (twin.light_dir, twin.ground_colours, twin.checker_size) == (
        scene.light_dir,
        scene.ground_colours,
        scene.checker_size,
    )
    assert sorted(twin_boxes) == sorted(boxes)  # every visible object stays visible
    assert not np.array_equal(twin_hits.rgb, hits.rgb)
    assert (twin_hits.instance != hits.instance).any()


def test_the_largest_visible_object_is_the_one_changed_when_it_can_be():
    largest_changed = 0
    for index in INDICES:
        scene, hits, boxes = visible_scene(5, index, 64)
        twin, _, _ = shape_twin(scene, hits, boxes, 64, np.random.default_rng(index))
        largest_changed += _changed(scene, twin) == [largest_visible(hits.instance, sorted(boxes), len(scene.objects))]
    assert largest_changed >= len(INDICES) - 2


def test_twin_captions_name_the_same_objects_but_one_shape():
    for index in INDICES:
        sample = render_scene_with_twin(3, index)
        assert len(sample["twin_caption"]) == len(sample["caption"])
        scene_objects = _objects_named(sample["caption"][1])  # "from left to right, a large red cube, ..."
        twin_objects = _objects_named(sample["twin_caption"][1])
        assert sum(scene_objects.values()) == sum(twin_objects.values())
        (gone,), (new,) = list(scene_objects - twin_objects), list(twin_objects - scene_objects)
        assert gone[:2] == new[:2] and gone[2] != new[2]  # same size and colour, another shape


def test_the_scene_part_is_render_scene_and_the_twin_is_deterministic():
    sample, again, plain = render_scene_with_twin(7, 4), render_scene_with_twin(7, 4), render_scene(7, 4)
    assert torch.equal(sample["rgb"], plain["rgb"]) and sample["caption"] == plain["caption"]
    assert torch.equal(sample["shape_label"], plain["shape_label"])
    assert torch.equal(sample["twin_rgb"], again["twin_rgb"]) and sample["twin_caption"] == again["twin_caption"]
    assert sample["twin_rgb"].shape == sample["rgb"].shape and sample["twin_rgb"].dtype == torch.uint8
    assert not torch.equal(render_scene_with_twin(8, 4)["twin_rgb"], sample["twin_rgb"])


def test_without_any_shape_that_fits_the_twin_takes_another_colour(monkeypatch):
    monkeypatch.setattr(twins, "keeps_clear", lambda obj, others: False)
    scene, hits, boxes = visible_scene(5, 0, 64)
    twin, twin_hits, twin_boxes = shape_twin(scene, hits, boxes, 64, np.random.default_rng(0))
    (changed,) = _changed(scene, twin)
    assert changed == largest_visible(hits.instance, sorted(boxes), len(scene.objects))
    before, after = scene.objects[changed], twin.objects[changed]
    assert before.colour != after.colour and replace(after, colour=before.colour) == before
    assert twin_boxes == boxes and np.array_equal(twin_hits.instance, hits.instance)
    assert not np.array_equal(twin_hits.rgb, hits.rgb)


def test_shards_carry_twins_only_when_asked(tmp_path):
    write_shards(tmp_path / "plain", num_samples=2, samples_per_shard=2, seed=3)
    assert not {"twin_rgb", "twin_caption"} & {p.name for p in (tmp_path / "plain").iterdir()}
    assert "twin_rgb" not in MODALITY_EXTENSIONS

    write_shards(
        tmp_path / "twins", num_samples=2, samples_per_shard=2, seed=3, modalities=("rgb", "twin_rgb", "twin_caption")
    )
    sample = render_scene_with_twin(3, 1)
    with tarfile.open(tmp_path / "twins" / "twin_rgb" / "shard-00000.tar") as tar:
        pixels = np.asarray(Image.open(io.BytesIO(tar.extractfile("00000001.twin_rgb.png").read())))
    with tarfile.open(tmp_path / "twins" / "twin_caption" / "shard-00000.tar") as tar:
        captions = json.loads(tar.extractfile("00000001.twin_caption.json").read())
    assert np.array_equal(pixels, sample["twin_rgb"].permute(1, 2, 0).numpy())
    assert captions == sample["twin_caption"]
    with pytest.raises(ValueError, match="twin_caption"):
        write_shards(tmp_path / "bad", num_samples=2, samples_per_shard=2, modalities=("rgb", "twin"))
