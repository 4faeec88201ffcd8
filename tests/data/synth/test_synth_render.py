import numpy as np
import pytest
import torch

from polymodal.data.synth.det_text import det_to_text, text_to_det
from polymodal.data.synth.render import (
    FAR,
    camera_basis,
    camera_rays,
    edge_map,
    ground_distance,
    object_height,
    project_point,
    render,
    render_scene,
    visible_boxes,
)
from polymodal.data.synth.scene import MAX_OBJECTS, Scene, SceneObject, sample_scene

SCENE_STYLE = dict(light_dir=(0.0, 1.0, 0.0), ground_colours=((200, 200, 200), (150, 150, 150)), checker_size=1.0)


def _one_object_scene(shape: str, x: float = 0.0, z: float = 0.0, yaw: float = 0.3) -> Scene:
    return Scene(objects=(SceneObject(shape, "red", "large", x, z, yaw),), **SCENE_STYLE)


def test_contract_types_and_shapes():
    sample = render_scene(3, 7, size=64)
    assert sample["rgb"].dtype == torch.uint8 and sample["rgb"].shape == (3, 64, 64)
    assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, 64, 64)
    assert sample["normal"].dtype == torch.float32 and sample["normal"].shape == (3, 64, 64)
    assert sample["semseg"].dtype == torch.int64 and sample["semseg"].shape == (64, 64)
    assert sample["edges"].dtype == torch.uint8 and sample["edges"].shape == (1, 64, 64)
    assert set(sample["edges"].unique().tolist()) <= {0, 255}
    assert sample["det"]["boxes"].dtype == torch.float32 and sample["det"]["boxes"].shape[1] == 4
    assert sample["det"]["labels"].dtype == torch.int64
    assert sample["label"].dtype == torch.int64 and sample["label"].dim() == 0
    assert isinstance(sample["caption"], list) and len(sample["caption"]) >= 3
    assert int(sample["label"]) == len(sample["det"]["labels"]) - 1


def _assert_same(a, b):
    for key in ("rgb", "depth", "normal", "semseg", "edges", "label", "colour_label", "shape_label"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(a["det"]["boxes"], b["det"]["boxes"]) and a["caption"] == b["caption"]


def test_deterministic_in_seed_and_index():
    _assert_same(render_scene(5, 11), render_scene(5, 11))
    assert not torch.equal(render_scene(5, 11)["rgb"], render_scene(5, 12)["rgb"])
    assert not torch.equal(render_scene(5, 11)["rgb"], render_scene(6, 11)["rgb"])


def test_labels_cover_all_counts():
    labels = {int(render_scene(0, i)["label"]) for i in range(40)}
    assert labels == set(range(MAX_OBJECTS))


@pytest.mark.parametrize("index", range(6))
def test_background_exactly_where_depth_is_ground_or_far(index):
    scene = sample_scene(1, index)
    hits = render(scene, 64)
    origin, dirs = camera_rays(64)
    ground_z = (ground_distance(origin, dirs) * (dirs @ camera_basis()[2])).reshape(64, 64)
    background_depth = np.where(ground_z < FAR, ground_z, FAR)
    is_background = hits.semseg == 0
    assert np.allclose(hits.depth[is_background], background_depth[is_background], rtol=1e-5)
    assert (hits.depth[~is_background] < background_depth[~is_background] - 1e-4).all()
    assert ((hits.instance >= 0) == ~is_background).all()


@pytest.mark.parametrize("shape", ["sphere", "cube", "cylinder", "cone"])
def test_hit_points_lie_on_the_primitive_surface(shape):
    """Reconstruct each object pixel's world point from its depth and check the primitive's implicit equation."""
    scene = _one_object_scene(shape, x=0.3, z=-0.5)
    obj = scene.objects[0]
    hits = render(scene, 64)
    origin, dirs = camera_rays(64)
    mask = hits.instance.reshape(-1) == 0
    assert mask.sum() > 50
    points = origin + dirs[mask] * (hits.depth.reshape(-1)[mask] / (dirs[mask] @ camera_basis()[2]))[:, None]
    rel = points - np.array([obj.x, 0.0, obj.z])
    radial = np.hypot(rel[:, 0], rel[:, 2])
    r, h = obj.radius, object_height(obj)
    if shape == "sphere":
        residual = np.linalg.norm(rel - [0, r, 0], axis=1) - r
    elif shape == "cube":
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        local = np.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1] - r, s * rel[:, 0] + c * rel[:, 2]], axis=1)
        residual = np.abs(local).max(axis=1) - r
    elif shape == "cylinder":
        residual = np.minimum(np.abs(radial - r), np.abs(rel[:, 1] - h))
        assert (radial <= r + 1e-4).all() and (rel[:, 1] <= h + 1e-4).all()
    else:
        residual = radial - r / h * (h - rel[:, 1])
    assert np.abs(residual).max() < 1e-3


@pytest.mark.parametrize("index", range(6))
def test_normals_unit_length(index):
    normal = render_scene(2, index)["normal"]
    assert torch.allclose(normal.norm(dim=0), torch.ones(64, 64), atol=1e-4)


def test_sphere_normal_at_centre_pixel_faces_camera():
    scene = _one_object_scene("sphere")
    obj = scene.objects[0]
    hits = render(scene, 64)
    col, row = project_point(np.array([obj.x, obj.radius, obj.z]), 64)
    n = hits.normal[int(row), int(col)]
    assert hits.semseg[int(row), int(col)] == 1
    # the ray through that pixel in camera space; the normal there points back along it, i.e. towards the camera
    right, up, forward = camera_basis()
    ray = camera_rays(64)[1].reshape(64, 64, 3)[int(row), int(col)]
    ray_cam = np.array([ray @ right, ray @ up, -(ray @ forward)])
    assert n @ -ray_cam > 0.98 and n[2] > 0.95  # within the half-pixel offset of the pixel centre from the centre
    origin, centre = camera_rays(64)[0], np.array([obj.x, obj.radius, obj.z])
    b = ray @ (origin - centre)
    t = -b - np.sqrt(b * b - (np.sum((origin - centre) ** 2) - obj.radius**2))
    world = (origin + t * ray - centre) / obj.radius
    assert np.allclose(n, [world @ right, world @ up, -(world @ forward)], atol=1e-5)


@pytest.mark.parametrize("index", range(8))
def test_det_boxes_are_tight_around_their_objects_pixels(index):
    scene = sample_scene(4, index)
    hits = render(scene, 64)
    boxes = visible_boxes(hits.instance, len(scene.objects))
    for obj_index, (x0, y0, x1, y1) in boxes.items():
        rows, cols = np.nonzero(hits.instance == obj_index)
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (y0, y1, x0, x1)
        inside = hits.semseg[int(y0) : int(y1), int(x0) : int(x1)]
        assert (inside == scene.objects[obj_index].class_id).any()


@pytest.mark.parametrize("index", range(4))
def test_render_scene_boxes_cover_every_object_pixel(index):
    sample = render_scene(9, index)
    covered = torch.zeros(64, 64, dtype=torch.bool)
    for (x0, y0, x1, y1), label in zip(
        sample["det"]["boxes"].int().tolist(), sample["det"]["labels"].tolist(), strict=True
    ):
        covered[y0:y1, x0:x1] = True
        assert (sample["semseg"][y0:y1, x0:x1] == label).sum() >= 4
    assert not (sample["semseg"] > 0)[~covered].any()


def test_edges_mark_one_side_of_every_instance_boundary():
    hits = render(sample_scene(0, 2), 64)
    edges = edge_map(hits.instance, hits.depth)
    for a, b, ea, eb in (
        (hits.instance[:, :-1], hits.instance[:, 1:], edges[:, :-1], edges[:, 1:]),
        (hits.instance[:-1], hits.instance[1:], edges[:-1], edges[1:]),
    ):
        assert (ea | eb)[a != b].all()
    inst = np.pad(hits.instance, 1, mode="edge")
    depth = np.pad(hits.depth, 1, mode="edge")
    centre_inst, centre_depth = inst[1:-1, 1:-1], depth[1:-1, 1:-1]
    has_boundary = np.zeros_like(edges)
    for dr, dc in ((0, 1), (1, 0), (2, 1), (1, 2)):
        other_inst, other_depth = inst[dr : dr + 64, dc : dc + 64], depth[dr : dr + 64, dc : dc + 64]
        has_boundary |= (other_inst != centre_inst) | (np.abs(other_depth - centre_depth) > 0.08 * centre_depth)
    assert edges.any() and not (edges & ~has_boundary).any()


@pytest.mark.parametrize("size", [64, 128])
def test_sizes(size):
    sample = render_scene(0, 1, size)
    assert sample["rgb"].shape == (3, size, size) and sample["semseg"].shape == (size, size)
    assert (sample["det"]["boxes"] <= size).all()


def test_size_256_renders():
    assert render_scene(0, 0, 256)["depth"].shape == (1, 256, 256)


@pytest.mark.parametrize("shape", [(48, 80), (80, 48)])
@pytest.mark.parametrize("index", range(3))
def test_non_square_image_extends_the_square_view(shape, index):
    """Pixels stay square and the shorter side keeps the field of view, so the centre of a 48x80 (or 80x48) render
    is the 48x48 render of the same scene."""
    scene = sample_scene(0, index)
    square, wide = render(scene, 48), render(scene, shape)
    assert wide.rgb.shape == (*shape, 3) and wide.depth.shape == wide.semseg.shape == shape
    top, left = (shape[0] - 48) // 2, (shape[1] - 48) // 2
    centre = (slice(top, top + 48), slice(left, left + 48))
    assert (wide.semseg[centre] == square.semseg).mean() > 0.99
    assert np.allclose(wide.depth[centre], square.depth, atol=1e-3)


def test_the_longer_side_sees_more():
    scene = _one_object_scene("cube", x=3.2, z=0.0)  # right of the square view
    assert not (render(scene, 48).instance >= 0).any()
    wide = render(scene, (48, 80)).instance >= 0
    assert wide.sum() > 100 and not wide[:, :64].any()


@pytest.mark.parametrize("size", [(32, 64), (64, 32)])
def test_non_square_projection_and_boxes(size):
    height, width = size
    scene = _one_object_scene("sphere", x=0.4, z=-0.5)
    obj = scene.objects[0]
    col, row = project_point(np.array([obj.x, obj.radius, obj.z]), size)
    assert render(scene, size).semseg[int(row), int(col)] == 1
    ray = camera_rays(size)[1].reshape(height, width, 3)[int(row), int(col)]
    towards = np.array([obj.x, obj.radius, obj.z]) - camera_rays(size)[0]
    assert ray @ towards / np.linalg.norm(towards) > 0.999  # within about a pixel of the sphere's centre
    for index in range(3):
        sample = render_scene(9, index, size)
        assert sample["rgb"].shape == (3, *size) and sample["edges"].shape == (1, *size)
        boxes = sample["det"]["boxes"]
        assert (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()
        objects = text_to_det(det_to_text(boxes, sample["det"]["labels"], size), size)
        assert len(objects) == len(boxes)


@pytest.mark.parametrize("size", [8, 2000, 64.0, "64", (64,), (64, 8), [48, 64], (48.0, 64)])
def test_bad_size_is_rejected(size):
    with pytest.raises(ValueError, match="image size"):
        render_scene(0, 0, size)


def test_bad_index_is_rejected():
    with pytest.raises(ValueError, match="index"):
        render_scene(0, -1)
