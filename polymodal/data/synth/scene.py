"""Scene description and its deterministic sampling from ``(seed, index)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

SHAPES = ("sphere", "cube", "cylinder", "cone")  # semseg class id = position + 1; 0 is ground/background
SEMSEG_CLASSES = ("background", *SHAPES)  # the name of each semseg class id (background: the ground and the sky)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 190),
    "cyan": (40, 200, 210),
    "orange": (240, 130, 30),
    "grey": (130, 130, 130),
}
SIZES = {"small": 0.3, "large": 0.5}  # characteristic half-extent (radius) in metres
MAX_OBJECTS = 5
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
CLASS_NAMES = [f"{NUMBER_WORDS[n]} object{'s' if n > 1 else ''}" for n in range(1, MAX_OBJECTS + 1)]

# Placement area on the ground plane (world x right, y up, z towards the camera): a trapezoid that narrows towards
# the camera so that it stays in view.
_Z_RANGE = (-2.8, 1.0)
_HALF_WIDTH_NEAR, _WIDENING = 1.2, 0.35
_MIN_GAP = 0.1
_PLACEMENT_TRIES = 100


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # ground-plane position of the object's vertical axis
    z: float
    yaw: float  # rotation about the vertical axis in radians (visible only for cubes)

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def footprint(self) -> float:
        """Radius of the circle on the ground that contains the object (a cube's corners reach r*sqrt(2))."""
        return self.radius * (np.sqrt(2.0) if self.shape == "cube" else 1.0)

    @property
    def class_id(self) -> int:
        return SHAPES.index(self.shape) + 1


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    light_dir: tuple[float, float, float]  # unit vector from the surface towards the light
    ground_colours: tuple[tuple[int, int, int], tuple[int, int, int]]  # the two checker tiles
    checker_size: float  # checker tile edge in metres


def keeps_clear(obj: SceneObject, others: Sequence[SceneObject]) -> bool:
    """Whether ``obj``'s footprint stays at least the minimum gap away from every one of ``others``."""
    return all(np.hypot(obj.x - o.x, obj.z - o.z) > obj.footprint + o.footprint + _MIN_GAP for o in others)


def _place_objects(rng: np.random.Generator, count: int) -> list[SceneObject]:
    """Non-overlapping objects; a crowded draw that finds no free spot starts over (still deterministic)."""
    while True:
        objects: list[SceneObject] = []
        for _ in range(count):
            candidate = SceneObject(
                shape=str(rng.choice(SHAPES)),
                colour=str(rng.choice(list(PALETTE))),
                size=str(rng.choice(list(SIZES))),
                x=0.0,
                z=0.0,
                yaw=float(rng.uniform(0, np.pi / 2)),
            )
            for _ in range(_PLACEMENT_TRIES):
                z = float(rng.uniform(*_Z_RANGE))
                half_width = _HALF_WIDTH_NEAR + _WIDENING * (_Z_RANGE[1] - z)
                x = float(rng.uniform(-half_width, half_width))
                placed = replace(candidate, x=x, z=z)
                if keeps_clear(placed, objects):
                    objects.append(placed)
                    break
        if len(objects) == count:
            return objects


def sample_scene(seed: int, index: int, attempt: int = 0) -> Scene:
    """A random scene, a pure function of its arguments. ``attempt`` re-draws a scene with the same identity."""
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, index, attempt])
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = _place_objects(rng, count)
    # Light from the left or right, slightly in front of or behind the objects, so that shadows fall in view.
    azimuth, elevation, side = rng.uniform(-0.5, 0.4), rng.uniform(0.55, 0.95), rng.choice([-1.0, 1.0])
    light = (side * np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth))
    base = rng.uniform(150, 215)
    tint = rng.uniform(-15, 15, size=3)
    light_tile = tuple(int(np.clip(base + t, 0, 255)) for t in tint)
    dark_tile = tuple(int(np.clip(base * 0.72 + t, 0, 255)) for t in tint)
    return Scene(
        objects=tuple(objects),
        light_dir=tuple(float(v) for v in light),
        ground_colours=(light_tile, dark_tile),
        checker_size=float(rng.choice([0.5, 0.75, 1.0])),
    )
