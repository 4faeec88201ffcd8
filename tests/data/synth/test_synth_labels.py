"""Scene labels (count, colour and shape of the largest visible object) against a plain reference computation:
each object rasterised alone, then occlusion applied in the renderer's drawing order."""

import numpy as np
import pytest
import torch

from polymodal.data.synth.labels import (
    ATTRIBUTE_CLASSES,
    LABEL_MODALITIES,
    check_attribute,
    sample_labels,
    scene_labels,
)
from polymodal.data.synth.render import MIN_VISIBLE_PIXELS, render, render_scene
from polymodal.data.synth.scene import CLASS_NAMES, PALETTE, SHAPES, Scene, SceneObject, sample_scene

SIZE = 32
ATTEMPTS = 10  # as many redraws as render_scene makes before it drops hidden objects


def own_masks(scene: Scene) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, depth) of each object rendered alone in the scene's setting."""
    masks = []
    for obj in scene.objects:
        hits = render(Scene((obj,), scene.light_dir, scene.ground_colours, scene.checker_size), SIZE)
        masks.append((hits.instance == 0, hits.depth))
    return masks


def reference_areas(masks: list[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    """Visible pixels of each object: objects are drawn in scene order, and one covers a pixel only if it is
    strictly nearer than what the pixel shows already."""
    owner = np.full((SIZE, SIZE), -1)
    shown_depth = np.full((SIZE, SIZE), np.inf)
    for index, (mask, depth) in enumerate(masks):
        covers = mask & (depth < shown_depth)
        owner[covers] = index
        shown_depth[covers] = depth[covers]
    return [int((owner == index).sum()) for index in range(len(masks))]


def reference_scene(seed: int, index: int) -> tuple[Scene, list[int]] | None:
    """The scene render_scene shows (the first draw whose objects all show) and its visible areas; None when no
    draw manages it (render_scene then drops the hidden objects)."""
    for attempt in range(ATTEMPTS):
        scene = sample_scene(seed, index, attempt)
        areas = reference_areas(own_masks(scene))
        if all(area >= MIN_VISIBLE_PIXELS for area in areas):
            return scene, areas
    return None


def largest_of(areas: list[int]) -> int:
    largest = 0
    for index, area in enumerate(areas):
        if area > areas[largest]:  # equal areas keep the earlier object
            largest = index
    return largest


def test_labels_equal_the_reference_computation():
    occlusion_mattered = 0
    for index in range(48):
        found = reference_scene(1, index)
        if found is None:
            continue
        scene, areas = found
        sample = render_scene(1, index, SIZE)
        assert sample["det"]["labels"].tolist() == [o.class_id for o in scene.objects]  # the same scene
        largest = scene.objects[largest_of(areas)]
        expected = {
            "count": len(scene.objects) - 1,
            "colour": list(PALETTE).index(largest.colour),
            "shape": SHAPES.index(largest.shape),
            "object": [f"{c} {s}" for c in PALETTE for s in SHAPES].index(f"{largest.colour} {largest.shape}"),
        }
        assert sample_labels(sample) == expected, index
        for modality in LABEL_MODALITIES.values():
            assert sample[modality].dtype == torch.int64 and sample[modality].ndim == 0
        unoccluded = [int(mask.sum()) for mask, _ in own_masks(scene)]
        occlusion_mattered += largest_of(unoccluded) != largest_of(areas)
    assert occlusion_mattered >= 1  # some scene's largest object is only the largest once occlusion is applied


def test_equal_areas_go_to_the_earlier_object_and_hidden_objects_do_not_count():
    objects = (
        SceneObject("cube", "red", "small", 0.0, 0.0, 0.0),
        SceneObject("cone", "blue", "large", 1.0, 0.0, 0.0),
        SceneObject("sphere", "green", "large", 2.0, 0.0, 0.0),
    )
    instance = np.full((4, 4), -1)
    instance[0, :3] = 0
    instance[1, :3] = 1
    instance[2, :] = 2  # the most pixels, but not among the visible objects given
    labels = scene_labels(objects, instance, [1, 0])
    red, cube = list(PALETTE).index("red"), SHAPES.index("cube")
    assert labels == {"count": 1, "colour": red, "shape": cube, "object": red * len(SHAPES) + cube}
    assert ATTRIBUTE_CLASSES["object"][labels["object"]] == "red cube"
    instance[0, 0] = -1
    assert scene_labels(objects, instance, [0, 1])["shape"] == SHAPES.index("cone")
    with pytest.raises(ValueError, match="at least one visible object"):
        scene_labels(objects, instance, [])


def test_attribute_classes_and_their_check():
    objects = tuple(f"{colour} {shape}" for colour in PALETTE for shape in SHAPES)
    expected = {"count": tuple(CLASS_NAMES), "colour": tuple(PALETTE), "shape": SHAPES, "object": objects}
    assert ATTRIBUTE_CLASSES == expected
    assert [len(names) for names in ATTRIBUTE_CLASSES.values()] == [5, 8, 4, 32]
    assert check_attribute("colour") == "colour"
    with pytest.raises(ValueError, match="unknown label attribute 'size'; choose from count, colour, shape, object"):
        check_attribute("size")
