"""Several caption phrasings of a scene: counts, colours, shapes, sizes and left/right/front relations."""

from __future__ import annotations

from collections import Counter

from polymodal.data.synth.scene import NUMBER_WORDS, SceneObject


def _one(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _grouped(objects: list[SceneObject]) -> str:
    """'two blue spheres and a small red cube': same colour+shape merged, size kept when shared."""
    groups = Counter((o.colour, o.shape) for o in objects)
    parts = []
    for (colour, shape), count in groups.items():
        members = [o for o in objects if (o.colour, o.shape) == (colour, shape)]
        sizes = {o.size for o in members}
        size = f"{members[0].size} " if len(sizes) == 1 else ""
        parts.append(f"a {size}{colour} {shape}" if count == 1 else f"{NUMBER_WORDS[count]} {size}{colour} {shape}s")
    return _joined(parts)


def _count_phrase(n: int) -> str:
    return "one object" if n == 1 else f"{NUMBER_WORDS[n]} objects"


def describe_scene(objects: list[SceneObject], boxes: list[list[float]]) -> list[str]:
    """Captions of the visible ``objects``; ``boxes`` (xyxy pixels, same order) give their image positions."""
    if not objects or len(objects) != len(boxes):
        raise ValueError(f"need one box per object and at least one object, got {len(objects)} and {len(boxes)}")
    centres = [(box[0] + box[2]) / 2 for box in boxes]
    by_column = [obj for _, obj in sorted(zip(centres, objects, strict=True), key=lambda pair: pair[0])]
    n = len(objects)
    captions = [
        f"{_count_phrase(n)} on a checkered floor: {_grouped(objects)}",
        f"from left to right, {_joined([_one(o) for o in by_column])}",
    ]
    if n == 1:
        captions.append(f"a single {objects[0].size} {objects[0].colour} {objects[0].shape} on a checkered floor")
        return captions
    leftmost, rest = by_column[0], by_column[1:]
    captions.append(f"{_one(leftmost)} left of {_grouped(rest)}")
    nearest = max(objects, key=lambda o: o.z)  # world z grows towards the camera
    farthest = min(objects, key=lambda o: o.z)
    captions.append(f"{_one(nearest)} in front of {_one(farthest)}, {_count_phrase(n)} in total")
    return captions
