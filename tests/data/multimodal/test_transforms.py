import math

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode

from polymodal.data.multimodal.skips import SampleError
from polymodal.data.multimodal.transforms import (
    AlignedAugment,
    centre_square_crop,
    parse_modalities_spec,
    sample_resized_crop,
)

ALL_SPATIAL = ["rgb", "depth", "normal", "semseg", "edges", "det"]


def blocky_rgb(height: int, width: int, seed: int) -> torch.Tensor:
    """Random colours in 4x4 blocks, so crops keep structure that nearest sampling can track."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (3, math.ceil(height / 4), math.ceil(width / 4)), generator=g, dtype=torch.uint8)
    return coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :height, :width].contiguous()


def unit_normals(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(3, height, width, generator=g)
    return n / n.norm(dim=0, keepdim=True)


def full_sample(height: int = 64, width: int = 64, seed: int = 0) -> dict:
    rgb = blocky_rgb(height, width, seed)
    semseg = (rgb[0] > 128).to(torch.int64)
    return {
        "rgb": rgb,
        "depth": (rgb[1].to(torch.float32) / 10.0).unsqueeze(0),
        "normal": unit_normals(height, width, seed),
        "semseg": semseg,
        "edges": ((rgb[2] > 200).to(torch.uint8) * 255).unsqueeze(0),
        "det": {"boxes": torch.tensor([[2.0, 10.0, 12.0, 20.0]]), "labels": torch.tensor([3]), "names": ["cone"]},
        "caption": ["a red cone", "one cone"],
        "label": torch.tensor(0),
    }


def only(sample: dict, *names: str) -> dict:
    return {name: sample[name] for name in names}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_keeps_rgb_and_semseg_aligned_pixel_for_pixel():
    augment = AlignedAugment(48, ["rgb", "semseg"], interpolation={"rgb": InterpolationMode.NEAREST}, to_float=False)
    for seed in range(20):
        out = augment(only(full_sample(seed=seed), "rgb", "semseg"), generator=seeded(seed))
        assert out["rgb"].shape == (3, 48, 48) and out["semseg"].shape == (48, 48)
        assert torch.equal(out["semseg"], (out["rgb"][0] > 128).to(torch.int64))


def test_flip_mirrors_every_modality_negates_normal_x_and_moves_left_box_right():
    sample = full_sample()
    augment = AlignedAugment(64, ALL_SPATIAL, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, to_float=False)
    out = augment(sample, generator=seeded(0))
    for name in ("rgb", "depth", "semseg", "edges"):
        assert torch.equal(out[name], sample[name].flip(-1)), name
    expected_normal = sample["normal"].flip(-1)
    expected_normal[0] = -expected_normal[0]
    torch.testing.assert_close(out["normal"], expected_normal)
    torch.testing.assert_close(out["det"]["boxes"], torch.tensor([[52.0, 10.0, 62.0, 20.0]]))
    assert out["det"]["labels"].tolist() == [3] and out["det"]["names"] == ["cone"]


def test_no_flip_and_full_crop_is_identity():
    sample = full_sample()
    augment = AlignedAugment(64, ALL_SPATIAL, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    out = augment(sample, generator=seeded(0))
    torch.testing.assert_close(out["rgb"], sample["rgb"].to(torch.float32) / 255.0)
    torch.testing.assert_close(out["normal"], sample["normal"])
    torch.testing.assert_close(out["det"]["boxes"], sample["det"]["boxes"])


def test_boxes_still_bound_a_coloured_square_after_crop_and_resize():
    augment = AlignedAugment(40, ["rgb", "det"], interpolation={"rgb": InterpolationMode.NEAREST}, to_float=False)
    seen_boxes = 0
    for seed in range(40):
        g = seeded(1000 + seed)
        x0, y0 = (int(v) for v in torch.randint(0, 44, (2,), generator=g))
        side = int(torch.randint(6, 20, (1,), generator=g))
        rgb = torch.zeros(3, 64, 64, dtype=torch.uint8)
        rgb[0, y0 : y0 + side, x0 : x0 + side] = 255
        det = {
            "boxes": torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32),
            "labels": torch.tensor([1]),
        }
        out = augment({"rgb": rgb, "det": det}, generator=seeded(seed))
        ys, xs = torch.nonzero(out["rgb"][0] == 255, as_tuple=True)
        boxes = out["det"]["boxes"]
        if len(xs) == 0:
            assert len(boxes) == 0 or (boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1]) < 4
            continue
        assert boxes.shape == (1, 4)
        seen_boxes += 1
        pixel_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.all((boxes[0] - pixel_box).abs() <= 1.0), (seed, boxes[0], pixel_box)
    assert seen_boxes >= 20


def test_boxes_match_naive_affine_reference_and_vanishing_boxes_are_dropped():
    sample = only(full_sample(), "rgb")
    sample["det"] = {
        "boxes": torch.tensor([[2.0, 10.0, 12.0, 20.0], [30.0, 30.0, 50.0, 60.0], [0.0, 0.0, 64.0, 64.0]]),
        "labels": torch.tensor([1, 2, 3]),
        "names": ["sphere", "cube", "cylinder"],
    }
    resolution, scale, ratio = 32, (0.2, 0.5), (0.75, 1.33)
    augment = AlignedAugment(resolution, ["rgb", "det"], scale=scale, ratio=ratio, hflip=0.5)
    dropped_some = False
    for seed in range(30):
        out = augment(sample, generator=seeded(seed))
        # Replay the documented draw order: crop parameters, then the flip.
        replay = seeded(seed)
        top, left, h, w = sample_resized_crop(64, 64, scale, ratio, replay)
        flip = bool(torch.rand((), generator=replay) < 0.5)
        expected, labels, names = [], [], []
        for box, label, name in zip(sample["det"]["boxes"].tolist(), [1, 2, 3], sample["det"]["names"], strict=True):
            x0, y0, x1, y1 = box
            sx, sy = resolution / w, resolution / h
            nx0, nx1 = (x0 - left) * sx, (x1 - left) * sx
            if flip:
                nx0, nx1 = resolution - nx1, resolution - nx0
            ny0, ny1 = (y0 - top) * sy, (y1 - top) * sy
            clamped = [min(max(v, 0.0), resolution) for v in (nx0, ny0, nx1, ny1)]
            if (clamped[2] - clamped[0]) * (clamped[3] - clamped[1]) >= 1.0:
                expected.append(clamped)
                labels.append(label)
                names.append(name)
        dropped_some |= len(labels) < 3
        torch.testing.assert_close(out["det"]["boxes"], torch.tensor(expected).reshape(-1, 4))
        assert out["det"]["labels"].tolist() == labels and out["det"]["names"] == names
    assert dropped_some


def test_each_modality_gets_its_own_resolution():
    augment = AlignedAugment(48, ["rgb@64", "depth@32", "normal", "semseg@16", "edges@8", "det@32", "caption", "label"])
    out = augment(full_sample(), generator=seeded(3))
    assert out["rgb"].shape == (3, 64, 64) and out["rgb"].dtype == torch.float32
    assert out["depth"].shape == (1, 32, 32) and out["depth"].dtype == torch.float32
    assert out["normal"].shape == (3, 48, 48)
    assert out["semseg"].shape == (16, 16) and out["semseg"].dtype == torch.int64
    assert out["edges"].shape == (1, 8, 8) and out["edges"].dtype == torch.uint8
    assert torch.all(out["det"]["boxes"] <= 32)


def test_size_dict_and_large_resolutions():
    augment = AlignedAugment({"rgb": 256, "semseg": 128}, ["rgb", "semseg"])
    out = augment(only(full_sample(128, 128), "rgb", "semseg"), generator=seeded(0))
    assert out["rgb"].shape == (3, 256, 256) and out["semseg"].shape == (128, 128)
    with pytest.raises(ValueError, match="'depth'"):
        AlignedAugment({"rgb": 64}, ["rgb", "depth"])


def test_value_semantics_survive_interpolation():
    sample = full_sample()
    augment = AlignedAugment(40, ALL_SPATIAL)
    for seed in range(5):
        out = augment(sample, generator=seeded(seed))
        assert set(out["depth"].unique().tolist()) <= set(sample["depth"].unique().tolist())
        assert set(out["semseg"].unique().tolist()) <= {0, 1}
        assert set(out["edges"].unique().tolist()) <= {0, 255}
        torch.testing.assert_close(out["normal"].norm(dim=0), torch.ones(40, 40))
        assert 0.0 <= out["rgb"].min() and out["rgb"].max() <= 1.0


def test_same_seed_same_result_and_different_seeds_differ():
    sample = full_sample()
    augment = AlignedAugment(32, ALL_SPATIAL)
    first = augment(sample, generator=seeded(7))
    second = augment(sample, generator=seeded(7))
    for name in ("rgb", "depth", "normal", "semseg", "edges"):
        assert torch.equal(first[name], second[name]), name
    assert torch.equal(first["det"]["boxes"], second["det"]["boxes"])
    others = [augment(sample, generator=seeded(s))["rgb"] for s in range(8, 12)]
    assert any(not torch.equal(first["rgb"], other) for other in others)


def test_eval_is_deterministic_centre_square_crop_without_flip():
    sample = full_sample(64, 96)
    sample["det"] = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 5.0, 50.0, 15.0]]),
        "labels": torch.tensor([1, 2]),
    }
    augment = AlignedAugment(64, ALL_SPATIAL, train=False, to_float=False)
    assert centre_square_crop(64, 96) == (0, 16, 64, 64)
    for seed in range(3):
        out = augment(sample, generator=seeded(seed))
        for name in ("rgb", "depth", "semseg", "edges"):
            assert torch.equal(out[name], sample[name][..., :, 16:80]), name
        torch.testing.assert_close(out["normal"], sample["normal"][:, :, 16:80])
        torch.testing.assert_close(out["det"]["boxes"], torch.tensor([[24.0, 5.0, 34.0, 15.0]]))
        assert out["det"]["labels"].tolist() == [2]


def test_absent_modalities_and_passthrough():
    augment = AlignedAugment(32, ALL_SPATIAL + ["caption", "label"])
    sample = {"rgb": blocky_rgb(64, 64, 0), "caption": ["two cubes"], "label": torch.tensor(1), "__key__": "00000001"}
    out = augment(sample, generator=seeded(0))
    assert out["rgb"].shape == (3, 32, 32)
    assert out["caption"] is sample["caption"] and out["label"] is sample["label"] and out["__key__"] == "00000001"
    assert set(out) == set(sample)
    text_only = {"caption": ["nothing spatial"]}
    assert augment(text_only, generator=seeded(0)) == text_only


def test_empty_detections():
    augment = AlignedAugment(32, ["rgb", "det"])
    out = augment({"rgb": blocky_rgb(64, 64, 0), "det": {"boxes": [], "labels": []}}, generator=seeded(0))
    assert out["det"]["boxes"].shape == (0, 4) and out["det"]["labels"].shape == (0,)


def test_sample_resized_crop_respects_bounds_and_ranges():
    g = seeded(0)
    for _ in range(200):
        top, left, h, w = sample_resized_crop(64, 96, (0.2, 1.0), (0.75, 4 / 3), g)
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 96
        assert 0.2 * 64 * 96 * 0.9 <= h * w <= 64 * 96
    # Impossible ratio falls back to the largest centre crop with the ratio clamped.
    assert sample_resized_crop(64, 64, (1.0, 1.0), (2.0, 2.0), g) == (16, 0, 32, 64)


@pytest.mark.parametrize(
    "spec, message",
    [
        (["rgb@abc"], "'abc' is not a positive integer"),
        (["rgb@0"], "not a positive integer"),
        (["rgb@-3"], "not a positive integer"),
        (["sky"], "unknown modality 'sky'"),
        (["rgb", "rgb@32"], "listed twice"),
        (["caption@64"], "takes no resolution"),
    ],
)
def test_bad_spec_raises_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        AlignedAugment(64, spec)


def test_parse_modalities_spec():
    assert parse_modalities_spec(["rgb@128", "depth", "caption"], 64) == {"rgb": 128, "depth": 64, "caption": None}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.8, 0.2)}, "scale"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"hflip": 1.5}, "hflip"),
        ({"interpolation": {"det": InterpolationMode.NEAREST}}, "'det'"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlignedAugment(64, ["rgb"], **kwargs)


@pytest.mark.parametrize(
    ("sample", "reason", "message"),
    [
        ({"rgb": torch.zeros(64, 64, 3, dtype=torch.uint8)}, "wrong_mode", "'rgb' must have shape"),
        ({"rgb": torch.zeros(1, 64, 64, dtype=torch.uint8)}, "wrong_mode", "'rgb' must have shape"),
        ({"rgb": torch.zeros(3, 64, 64)}, "wrong_mode", "'rgb' must be uint8"),
        ({"depth": torch.zeros(3, 64, 64)}, "wrong_mode", "'depth' must have shape"),
        ({"rgb": blocky_rgb(64, 64, 0), "depth": torch.zeros(1, 32, 32)}, "wrong_shape", "disagree"),
        ({"rgb": blocky_rgb(320, 320, 0), "depth": torch.zeros(1, 64, 64)}, "wrong_shape", "disagree"),
    ],
)
def test_valid_images_of_the_wrong_mode_or_shape_are_sample_errors(sample, reason, message):
    with pytest.raises(SampleError, match=message) as caught:
        AlignedAugment(64, ["rgb", "depth"])(sample)
    assert caught.value.reason == reason


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size", [32, 5, 512])
def test_images_smaller_or_larger_than_the_target_are_resized_not_skipped(train, size):
    out = AlignedAugment(64, ["rgb", "depth"], train=train)(
        {"rgb": blocky_rgb(size, size, 0), "depth": torch.ones(1, size, size)}, seeded(0)
    )
    assert out["rgb"].shape == (3, 64, 64) and out["depth"].shape == (1, 64, 64)
    assert torch.equal(out["depth"], torch.ones(1, 64, 64))


def test_bad_samples_raise():
    augment = AlignedAugment(32, ["rgb", "depth", "det"])
    with pytest.raises(ValueError, match=r"\['semseg'\]"):
        augment({"rgb": blocky_rgb(64, 64, 0), "semseg": torch.zeros(64, 64, dtype=torch.int64)})
    with pytest.raises(ValueError, match="canvas"):
        augment({"det": {"boxes": [[0, 0, 1, 1]], "labels": [1]}})
    with pytest.raises(ValueError, match="'labels' has 2 entries for 1 boxes"):
        augment({"rgb": blocky_rgb(64, 64, 0), "det": {"boxes": [[0, 0, 1, 1]], "labels": [1, 2]}})
    with pytest.raises(ValueError, match="unknown fields"):
        augment({"rgb": blocky_rgb(64, 64, 0), "det": {"boxes": [[0, 0, 1, 1]], "labels": [1], "scores": [0.5]}})
