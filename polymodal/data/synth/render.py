"""Vectorised ray casting of a :class:`Scene`: analytic ray-primitive hits, then every modality from the same hits.

Conventions: world x right, y up, z towards the camera; the ground is the plane y = 0. Camera space is x right,
y up, z towards the camera. ``depth`` is the distance along the camera's viewing axis (planar z-depth) in metres;
background (sky, and ground farther than ``FAR``) has depth ``FAR``. Background normals face the camera (0, 0, 1).
Detection boxes are ``[x0, y0, x1, y1]`` pixel edges: the box covers columns x0..x1-1 and rows y0..y1-1.
Images may be non-square: pixels stay square and the shorter side keeps the field of view (:func:`camera_rays`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from polymodal.data.synth.captions import describe_scene
from polymodal.data.synth.labels import LABEL_MODALITIES, scene_labels
from polymodal.data.synth.scene import PALETTE, Scene, SceneObject, sample_scene
from polymodal.progress import progress

FAR = 20.0
MIN_VISIBLE_PIXELS = 4
MIN_SIZE, MAX_SIZE = 16, 1024
_SCENE_ATTEMPTS = 10  # redraws until every object is visible; after that, hidden objects are dropped
_CAMERA_POSITION = np.array([0.0, 2.6, 4.6])
_CAMERA_TARGET = np.array([0.0, 0.0, -0.8])
_FIELD_OF_VIEW = np.deg2rad(50.0)
_AMBIENT = 0.35
_SHADOW_DIM = 0.45
_EDGE_DEPTH_JUMP = 0.08  # relative depth change between neighbours that counts as a boundary
_EPS = 1e-4
_HEIGHT_OVER_RADIUS = {"sphere": 2.0, "cube": 2.0, "cylinder": 1.8, "cone": 2.4}

ImageSize = int | tuple[int, int]  # the side of a square image, or (height, width)


@dataclass
class RayHits:
    """Per-pixel results of casting one ray per pixel (numpy, H×W leading dims)."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W]
    normal: np.ndarray  # float32 [H, W, 3], camera space
    instance: np.ndarray  # int64 [H, W], index into scene.objects, -1 = ground/background
    semseg: np.ndarray  # int64 [H, W]


def camera_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit vectors of the camera in world space."""
    forward = _CAMERA_TARGET - _CAMERA_POSITION
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    return right, np.cross(right, forward), forward


def image_shape(size: ImageSize) -> tuple[int, int]:
    """``(height, width)`` of ``size``: the side of a square image, or ``(height, width)``, each side in
    [``MIN_SIZE``, ``MAX_SIZE``]."""
    shape = (size, size) if isinstance(size, int) else size
    if not (
        isinstance(shape, tuple)
        and len(shape) == 2
        and all(isinstance(side, int) and MIN_SIZE <= side <= MAX_SIZE for side in shape)
    ):
        raise ValueError(
            f"image size must be an int or a (height, width) tuple of ints in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}"
        )
    return shape


def _pixel_centres(count: int, shorter: int) -> np.ndarray:
    """Centres of ``count`` pixels along one side in units of the half field of view: the shorter side spans
    [-1, 1] and a longer one, with the same pixel pitch, reaches beyond. (Scaling by ``count / shorter`` last keeps
    a square image's rays bit-identical to before non-square images.)"""
    return ((np.arange(count) + 0.5) / count * 2 - 1) * (count / shorter)


def camera_rays(size: ImageSize) -> tuple[np.ndarray, np.ndarray]:
    """Origin [3] and unit directions [height*width, 3] of one ray through each pixel centre (row-major).

    Pixels are square: the shorter side of the image keeps the field of view, the longer side sees more.
    """
    height, width = image_shape(size)
    right, up, forward = camera_basis()
    half = np.tan(_FIELD_OF_VIEW / 2)
    shorter = min(height, width)
    ndc_y, ndc_x = np.meshgrid(
        -_pixel_centres(height, shorter) * half, _pixel_centres(width, shorter) * half, indexing="ij"
    )
    dirs = ndc_x.reshape(-1, 1) * right + ndc_y.reshape(-1, 1) * up + forward
    return _CAMERA_POSITION.copy(), dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def project_point(point: np.ndarray, size: ImageSize) -> tuple[float, float]:
    """(column, row) in continuous pixel coordinates of a world point in front of the camera."""
    height, width = image_shape(size)
    right, up, forward = camera_basis()
    rel = np.asarray(point, dtype=np.float64) - _CAMERA_POSITION
    half = np.tan(_FIELD_OF_VIEW / 2)
    ndc_x, ndc_y = rel @ right / (rel @ forward) / half, rel @ up / (rel @ forward) / half
    shorter = min(height, width)
    return (ndc_x * (shorter / width) + 1) / 2 * width, (1 - ndc_y * (shorter / height)) / 2 * height


def object_height(obj: SceneObject) -> float:
    return obj.radius * _HEIGHT_OVER_RADIUS[obj.shape]


def _nearest_positive(*candidates: np.ndarray) -> np.ndarray:
    stacked = np.stack([np.where(np.isfinite(c) & (c > _EPS), c, np.inf) for c in candidates])
    return stacked.min(axis=0)


# Intersectors: origins [N, 3] or [3] (broadcast), unit directions [N, 3] -> (t [N], inf = miss; world normal [N, 3]).


def _hit_sphere(origins: np.ndarray, dirs: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    centre = np.array([obj.x, obj.radius, obj.z])
    oc = origins - centre
    b = (dirs * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - obj.radius**2)
    root = np.sqrt(np.maximum(disc, 0))
    t = np.where(disc >= 0, _nearest_positive(-b - root, -b + root), np.inf)
    with np.errstate(invalid="ignore"):
        normal = (origins + t[:, None] * dirs - centre) / obj.radius
    return t, normal


def _hit_box(origins: np.ndarray, dirs: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """Slab test in the box's own frame (rotated by ``yaw`` about the vertical axis)."""
    cos, sin = np.cos(obj.yaw), np.sin(obj.yaw)
    to_local = np.array([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]])  # rotation by -yaw about y
    half = obj.radius
    o = (origins - np.array([obj.x, half, obj.z])) @ to_local.T
    d = dirs @ to_local.T
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (-half - o) / d, (half - o) / d
    t_near_axis, t_far = np.minimum(t1, t2), np.maximum(t1, t2).min(axis=1)
    axis = t_near_axis.argmax(axis=1)
    t_near = t_near_axis.max(axis=1)
    t = np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)
    local_normal = np.zeros_like(d)
    rows = np.arange(len(d))
    local_normal[rows, axis] = -np.sign(d[rows, axis])
    return t, local_normal @ to_local  # the inverse rotation is the transpose


def _hit_cylinder(origins: np.ndarray, dirs: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """Vertical capped cylinder standing on the ground (its bottom cap lies on the ground and is never seen)."""
    height, r = object_height(obj), obj.radius
    ox, oy, oz = origins[..., 0] - obj.x, origins[..., 1], origins[..., 2] - obj.z
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = np.maximum(dx * dx + dz * dz, 1e-12)
    b = ox * dx + oz * dz
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    root = np.sqrt(np.maximum(disc, 0))
    sides = []
    for t in ((-b - root) / a, (-b + root) / a):
        y = oy + t * dy
        sides.append(np.where((disc >= 0) & (y >= 0) & (y <= height), t, np.inf))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (height - oy) / np.where(dy == 0, 1e-12, dy)
    t_cap = np.where((ox + t_cap * dx) ** 2 + (oz + t_cap * dz) ** 2 <= r * r, t_cap, np.inf)
    t = _nearest_positive(*sides, t_cap)
    with np.errstate(invalid="ignore"):
        hit = origins + t[:, None] * dirs
    side_normal = np.stack([hit[:, 0] - obj.x, np.zeros_like(t), hit[:, 2] - obj.z], axis=1) / r
    normal = np.where((t == t_cap)[:, None], np.array([0.0, 1.0, 0.0]), side_normal)
    return t, normal


def _hit_cone(origins: np.ndarray, dirs: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """Upright cone, apex on top: x² + z² = k²(h - y)² for 0 <= y <= h (base on the ground, never seen)."""
    height = object_height(obj)
    k2 = (obj.radius / height) ** 2
    ox, oy, oz = origins[..., 0] - obj.x, origins[..., 1], origins[..., 2] - obj.z
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    o_apex = height - oy
    a = dx * dx + dz * dz - k2 * dy * dy
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    b = ox * dx + oz * dz + k2 * o_apex * dy
    disc = b * b - a * (ox * ox + oz * oz - k2 * o_apex**2)
    root = np.sqrt(np.maximum(disc, 0))
    roots = []
    for t in ((-b - root) / a, (-b + root) / a):
        y = oy + t * dy
        roots.append(np.where((disc >= 0) & (y >= 0) & (y <= height), t, np.inf))
    t = _nearest_positive(*roots)
    with np.errstate(invalid="ignore"):
        hit = origins + t[:, None] * dirs
    normal = np.stack([hit[:, 0] - obj.x, k2 * (height - hit[:, 1]), hit[:, 2] - obj.z], axis=1)
    with np.errstate(invalid="ignore"):
        return t, normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)


_INTERSECTORS = {"sphere": _hit_sphere, "cube": _hit_box, "cylinder": _hit_cylinder, "cone": _hit_cone}


def _closest_object_hits(origins: np.ndarray, dirs: np.ndarray, scene: Scene) -> tuple[np.ndarray, ...]:
    """Nearest object hit per ray: (t, world normal, object index or -1)."""
    best_t = np.full(len(dirs), np.inf)
    best_normal = np.zeros_like(dirs)
    best_index = np.full(len(dirs), -1, dtype=np.int64)
    for index, obj in enumerate(scene.objects):
        t, normal = _INTERSECTORS[obj.shape](origins, dirs, obj)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_normal[closer] = normal[closer]
        best_index[closer] = index
    return best_t, best_normal, best_index


def ground_distance(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray parameter where each ray meets the ground plane y = 0 (inf if it points upward)."""
    with np.errstate(divide="ignore"):
        return np.where(dirs[:, 1] < -1e-9, -origin[1] / dirs[:, 1], np.inf)


def _sky_colour(dirs: np.ndarray) -> np.ndarray:
    elevation = np.clip(dirs[:, 1:2] * 4, 0, 1)
    return (1 - elevation) * np.array([200.0, 220, 240]) + elevation * np.array([90.0, 140, 215])


def render(scene: Scene, size: ImageSize) -> RayHits:
    """Cast one ray per pixel through the scene; rgb, depth, normals and labels all come from the same hits."""
    height, width = image_shape(size)
    origin, dirs = camera_rays((height, width))
    right, up, forward = camera_basis()
    t_object, object_normal, instance = _closest_object_hits(origin, dirs, scene)
    t_ground = ground_distance(origin, dirs)
    z_per_t = dirs @ forward
    ground_visible = (t_ground < t_object) & (t_ground * z_per_t < FAR)
    instance = np.where(t_object < t_ground, instance, -1)
    on_object = instance >= 0
    t = np.where(on_object, t_object, np.where(ground_visible, t_ground, np.inf))
    surface = on_object | ground_visible
    depth = np.where(surface, np.minimum(t * z_per_t, FAR), FAR)

    world_normal = np.where(on_object[:, None], object_normal, np.array([0.0, 1.0, 0.0]))
    with np.errstate(invalid="ignore"):
        points = origin + np.where(surface, t, 0)[:, None] * dirs
    light = np.asarray(scene.light_dir)
    lit = ~_in_shadow(points[surface] + world_normal[surface] * 1e-3, light, scene)
    diffuse = np.zeros(len(dirs))
    diffuse[surface] = np.clip(world_normal[surface] @ light, 0, 1) * np.where(lit, 1.0, _SHADOW_DIM)

    albedo = _sky_colour(dirs)
    tiles = (np.floor(points[:, 0] / scene.checker_size) + np.floor(points[:, 2] / scene.checker_size)) % 2
    ground_albedo = np.where(tiles[:, None] == 0, scene.ground_colours[0], scene.ground_colours[1])
    albedo[ground_visible] = ground_albedo[ground_visible]
    object_colours = np.array([PALETTE[o.colour] for o in scene.objects] or [[0, 0, 0]], dtype=np.float64)
    albedo[on_object] = object_colours[instance[on_object]]
    shade = np.where(surface, _AMBIENT + (1 - _AMBIENT) * diffuse, 1.0)
    fog = np.where(ground_visible, np.clip((depth - 0.6 * FAR) / (0.4 * FAR), 0, 1), 0.0)[:, None]
    rgb = (1 - fog) * albedo * shade[:, None] + fog * _sky_colour(dirs)

    camera_normal = np.stack([world_normal @ right, world_normal @ up, -(world_normal @ forward)], axis=1)
    camera_normal[~surface] = (0.0, 0.0, 1.0)
    class_ids = np.array([0] + [o.class_id for o in scene.objects], dtype=np.int64)
    return RayHits(
        rgb=np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(height, width, 3),
        depth=depth.astype(np.float32).reshape(height, width),
        normal=camera_normal.astype(np.float32).reshape(height, width, 3),
        instance=instance.reshape(height, width),
        semseg=class_ids[instance + 1].reshape(height, width),
    )


def _in_shadow(points: np.ndarray, light: np.ndarray, scene: Scene) -> np.ndarray:
    towards_light = np.broadcast_to(light, points.shape)
    return _closest_object_hits(points, towards_light, scene)[2] >= 0


def edge_map(instance: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Object boundaries: between different instances, or across a depth jump, marked on the nearer pixel."""
    edges = np.zeros(instance.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        ia, ib, da, db = instance[tuple(a)], instance[tuple(b)], depth[tuple(a)], depth[tuple(b)]
        jump = np.abs(da - db) > _EDGE_DEPTH_JUMP * np.minimum(da, db)
        boundary = (ia != ib) | (jump & ((ia >= 0) | (ib >= 0)))
        edges[tuple(a)] |= boundary & (da <= db)
        edges[tuple(b)] |= boundary & (db < da)
    return edges


def visible_boxes(instance: np.ndarray, count: int) -> dict[int, list[float]]:
    """Pixel-edge xyxy box of each object with at least ``MIN_VISIBLE_PIXELS`` visible pixels, by object index."""
    boxes = {}
    for index in range(count):
        rows, cols = np.nonzero(instance == index)
        if len(rows) >= MIN_VISIBLE_PIXELS:
            boxes[index] = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
    return boxes


def visible_scene(seed: int, index: int, size: ImageSize) -> tuple[Scene, RayHits, dict[int, list[float]]]:
    """Redraw until every object shows; if none of the attempts manage it, keep only the visible objects."""
    for attempt in range(_SCENE_ATTEMPTS):
        scene = sample_scene(seed, index, attempt)
        hits = render(scene, size)
        boxes = visible_boxes(hits.instance, len(scene.objects))
        if len(boxes) == len(scene.objects):
            return scene, hits, boxes
    visible = tuple(o for i, o in enumerate(scene.objects) if i in boxes)
    scene = Scene(visible, scene.light_dir, scene.ground_colours, scene.checker_size)
    hits = render(scene, size)
    return scene, hits, visible_boxes(hits.instance, len(visible))


def render_scene(seed: int, index: int, size: ImageSize = 64) -> dict:
    """One sample with every modality of the shared contract, a pure function of ``(seed, index, size)``.

    ``size`` is the side of a square image or ``(height, width)`` (see :func:`camera_rays` for the field of view).
    The scene labels (:mod:`~polymodal.data.synth.labels`) are int64 scalars under their modality names: ``label``
    (the count), ``colour_label`` and ``shape_label``.
    """
    return scene_sample(*visible_scene(seed, index, size))


def scene_sample(scene: Scene, hits: RayHits, boxes: dict[int, list[float]]) -> dict:
    """The sample of :func:`render_scene` from a scene, its ``hits`` and the boxes of its visible objects."""
    order = sorted(boxes)
    labels = [scene.objects[i].class_id for i in order]
    attributes = scene_labels(scene.objects, hits.instance, order)
    return {
        "rgb": torch.from_numpy(hits.rgb).permute(2, 0, 1).contiguous(),
        "depth": torch.from_numpy(hits.depth)[None],
        "normal": torch.from_numpy(hits.normal).permute(2, 0, 1).contiguous(),
        "semseg": torch.from_numpy(hits.semseg),
        "edges": torch.from_numpy(edge_map(hits.instance, hits.depth).astype(np.uint8) * 255)[None],
        "det": {
            "boxes": torch.tensor([boxes[i] for i in order], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        },
        "caption": describe_scene([scene.objects[i] for i in order], [boxes[i] for i in order]),
        **{modality: torch.tensor(attributes[a], dtype=torch.int64) for a, modality in LABEL_MODALITIES.items()},
    }


def render_scenes(seed: int, count: int, size: ImageSize = 64, description: str = "rendering scenes") -> list[dict]:
    """Scenes ``0 .. count - 1`` of ``seed`` (:func:`render_scene`), reporting progress as ``description``."""
    scenes = []
    with progress(description, total=count) as advance:
        for index in range(count):
            scenes.append(render_scene(seed, index, size))
            advance(1)
    return scenes
