"""Scene labels for probing: the object count and the colour and shape of the largest visible object.

Each attribute's label is a class id, an index into that attribute's class names (:data:`ATTRIBUTE_CLASSES`):

=========  =========================================  ==========================  ===================
attribute  value                                      class names                 shard modality
=========  =========================================  ==========================  ===================
count      visible objects - 1                        ``CLASS_NAMES`` (5)         ``label``
colour     colour of the largest visible object       ``COLOURS`` (8)             ``colour_label``
shape      shape of the largest visible object        ``SHAPES`` (4)              ``shape_label``
object     colour and shape of the largest visible    ``OBJECTS`` (32, e.g.       (colour x 4 + shape)
           object                                     ``"red cube"``)
=========  =========================================  ==========================  ===================

(The shape id counts from 0; the ``det``/``semseg`` class id of the same shape is one more, 0 being background.)

Visible area. The renderer casts one ray per pixel and a pixel shows the object its ray meets first: objects
nearer along the ray occlude those behind, whatever their order in the scene; the renderer tests the objects in
scene order and takes a later one only when it is strictly nearer, so an exact tie in distance shows the earlier
object. An object's visible area is its pixel count in that ``instance`` map — the map ``semseg``, ``edges`` and
the ``det`` boxes come from. The largest visible object has the largest area among the visible objects (those with
a box); equal areas go to the earlier object in scene order (= the first of them in ``det``).

Labels belong to the image they were rendered with: another size or aspect ratio can change the areas (and which
objects are visible at all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from polymodal.data.synth.scene import CLASS_NAMES, PALETTE, SHAPES, SceneObject

COLOURS = tuple(PALETTE)
OBJECTS = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)  # a supervised task needing both
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "count": tuple(CLASS_NAMES),
    "colour": COLOURS,
    "shape": SHAPES,
    "object": OBJECTS,
}
ATTRIBUTES = tuple(ATTRIBUTE_CLASSES)
LABEL_MODALITIES = {"count": "label", "colour": "colour_label", "shape": "shape_label"}
DEFAULT_ATTRIBUTE = "count"


def check_attribute(name: str) -> str:
    """``name`` if it is an attribute, else a ``ValueError`` naming the choices."""
    if name not in ATTRIBUTE_CLASSES:
        raise ValueError(f"unknown label attribute {name!r}; choose from {', '.join(ATTRIBUTES)}")
    return name


def visible_areas(instance: np.ndarray, count: int) -> np.ndarray:
    """Pixel count of each of ``count`` objects in an instance map (object index per pixel, -1 = none)."""
    return np.bincount(instance[instance >= 0].ravel(), minlength=count)


def largest_visible(instance: np.ndarray, visible: Sequence[int], count: int) -> int:
    """The index of the visible object of largest area in an ``instance`` map of ``count`` objects (the first of
    equals in scene order)."""
    if not visible:
        raise ValueError("a scene needs at least one visible object to be labelled")
    areas = visible_areas(instance, count)
    return max(sorted(visible), key=lambda index: areas[index])  # max keeps the first of equals


def scene_labels(objects: Sequence[SceneObject], instance: np.ndarray, visible: Sequence[int]) -> dict[str, int]:
    """The class id of every attribute, from the scene's ``objects``, its rendered ``instance`` map and the indices
    of its ``visible`` objects (those with a box)."""
    largest = objects[largest_visible(instance, visible, len(objects))]
    return with_object(
        {"count": len(visible) - 1, "colour": COLOURS.index(largest.colour), "shape": SHAPES.index(largest.shape)}
    )


def with_object(labels: dict[str, int]) -> dict[str, int]:
    """``labels`` (count, colour, shape) with the object class their colour and shape make."""
    return {**labels, "object": labels["colour"] * len(SHAPES) + labels["shape"]}


def sample_labels(sample: Mapping) -> dict[str, int]:
    """The class id of every attribute of a rendered sample (:func:`~polymodal.data.synth.render.render_scene`)."""
    return with_object({attribute: int(sample[modality]) for attribute, modality in LABEL_MODALITIES.items()})
