"""Shape twins: a scene again with one object in another shape, everything else (camera, light, floor, the other
objects) unchanged — hard negative images and captions for contrastive training.

A contrastive image-text model tells the scenes of a batch apart by whatever separates them most easily. In these
scenes the colours, the count and the positions almost always do, so a tiny CLIP never needs the shapes: a linear
probe of its image embedding reads the largest object's shape no better than on random weights, although the
shapes present in a scene would alone give a linear probe 0.70 (docs/clip.md). A twin differs from its scene only in
the shape of its largest visible object, in the picture and in the captions, so a batch holding both can be sorted
only by that shape (TripletCLIP, Patel et al. 2024, makes such pairs with generative models; the renderer makes
them exactly).

The twin's shape is another of the four, in a random order, the first with which the object keeps its gap to the
others and every visible object stays visible. Failing that, the next largest visible object is tried, and so on;
a scene where no shape change works (rare: a cube does not fit, the others would hide a neighbour) gets a twin
whose largest visible object is in another colour instead, which leaves the geometry as it is.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from polymodal.data.synth.captions import describe_scene
from polymodal.data.synth.labels import COLOURS, visible_areas
from polymodal.data.synth.render import ImageSize, RayHits, render, scene_sample, visible_boxes, visible_scene
from polymodal.data.synth.scene import SHAPES, Scene, SceneObject, keeps_clear

TWIN_STREAM = 2  # the twin's random stream of a scene: np.random.default_rng([seed, index, TWIN_STREAM])


def _with_object(scene: Scene, index: int, obj: SceneObject) -> Scene:
    objects = tuple(obj if i == index else o for i, o in enumerate(scene.objects))
    return replace(scene, objects=objects)


def _shape_changed(
    scene: Scene, visible: list[int], size: ImageSize, by_area: list[int], rng: np.random.Generator
) -> tuple[Scene, RayHits, dict[int, list[float]]] | None:
    for index in by_area:
        obj = scene.objects[index]
        others = [o for i, o in enumerate(scene.objects) if i != index]
        for shape in rng.permutation([s for s in SHAPES if s != obj.shape]):
            changed = replace(obj, shape=str(shape))
            if not keeps_clear(changed, others):
                continue
            twin = _with_object(scene, index, changed)
            hits = render(twin, size)
            boxes = visible_boxes(hits.instance, len(twin.objects))
            if sorted(boxes) == visible:
                return twin, hits, boxes
    return None


def shape_twin(
    scene: Scene, hits: RayHits, boxes: dict[int, list[float]], size: ImageSize, rng: np.random.Generator
) -> tuple[Scene, RayHits, dict[int, list[float]]]:
    """The twin of a rendered ``scene`` (its ``hits`` and visible ``boxes``), rendered at ``size``, with its boxes."""
    visible = sorted(boxes)
    areas = visible_areas(hits.instance, len(scene.objects))
    by_area = sorted(visible, key=lambda index: -areas[index])  # stable: the first of equals first
    found = _shape_changed(scene, visible, size, by_area, rng)
    if found is not None:
        return found
    largest = scene.objects[by_area[0]]
    colour = str(rng.choice([c for c in COLOURS if c != largest.colour]))
    twin = _with_object(scene, by_area[0], replace(largest, colour=colour))
    return twin, render(twin, size), boxes


def render_scene_with_twin(seed: int, index: int, size: ImageSize = 64) -> dict:
    """:func:`~polymodal.data.synth.render.render_scene`'s sample with its twin's ``twin_rgb`` (uint8 [3, H, W])
    and ``twin_caption`` (the twin's captions, in the order of the scene's phrasings); a pure function of its
    arguments."""
    scene, hits, boxes = visible_scene(seed, index, size)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, index, TWIN_STREAM])
    twin, twin_hits, twin_boxes = shape_twin(scene, hits, boxes, size, rng)
    order = sorted(twin_boxes)
    return {
        **scene_sample(scene, hits, boxes),
        "twin_rgb": torch.from_numpy(twin_hits.rgb).permute(2, 0, 1).contiguous(),
        "twin_caption": describe_scene([twin.objects[i] for i in order], [twin_boxes[i] for i in order]),
    }
