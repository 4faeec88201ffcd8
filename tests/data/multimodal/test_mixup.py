"""Mixup/CutMix batch transform: equals a plain per-row computation with the same lambda and box, is seeded by the
batch's global position (same batches for 0 and 2 workers and after a resume), and rejects bad input in one line."""

import math

import numpy as np
import pytest
import torch

from polymodal.config import ConfigError, instantiate
from polymodal.data.multimodal.data_module import MultimodalData
from polymodal.data.multimodal.loader import batch_generator
from polymodal.data.multimodal.mixup import MixDraw, MixupCutmix
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.synth.writers import write_shards

MODALITIES = ("rgb", "label")
SEED = 5
BATCH = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixup_shards")
    write_shards(root, num_samples=20, samples_per_shard=10, seed=3, size=32, modalities=MODALITIES)
    pattern = f"{root}/[rgb,label]/shard-{{00000..00001}}.tar"
    raw = MultimodalShards(pattern, cache_dir=tmp_path_factory.mktemp("index"))
    num_classes = 1 + max(int(raw[i]["label"]) for i in range(len(raw)))
    return pattern, num_classes


def make(shards, cache, mixup=None, **overrides):
    pattern, num_classes = shards
    args = dict(
        train=pattern,
        val=pattern,
        modalities=["rgb@16", "label"],
        image_size=16,
        batch_size=BATCH,
        cache_dir=str(cache),
        seed=SEED,
    )
    if mixup is not None:
        args["mixup"] = {"num_classes": num_classes, **mixup}
    return MultimodalData(**{**args, **overrides})


def reference_mix(images, labels, num_classes, smoothing, draw):
    """Row i mixed with row B-1-i, written out one row and one pixel block at a time."""
    b = images.shape[0]
    mixed, targets = images.clone(), torch.zeros(b, num_classes)
    for i in range(b):
        j = b - 1 - i
        if draw.box is not None:
            top, bottom, left, right = draw.box
            for y in range(top, bottom):
                for x in range(left, right):
                    mixed[i, :, y, x] = images[j, :, y, x]
        else:
            mixed[i] = draw.lam * images[i] + (1 - draw.lam) * images[j]
        for row, weight in ((i, draw.lam), (j, 1 - draw.lam)):
            smooth = torch.full((num_classes,), smoothing / num_classes)
            smooth[int(labels[row])] += 1 - smoothing
            targets[i] += weight * smooth
    return mixed, targets


@pytest.mark.parametrize(
    ("settings", "kinds_seen"),
    [
        ({"mixup_alpha": 0.8, "cutmix_alpha": 0.0}, {"mixup"}),
        ({"mixup_alpha": 0.0, "cutmix_alpha": 1.0}, {"cutmix"}),
        ({"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.0}, {"mixup", "cutmix"}),
        ({"prob": 0.0}, {"none"}),  # never mixed: label smoothing only
    ],
)
def test_loader_batches_equal_a_plain_mix_of_the_unmixed_batches(shards, tmp_path, settings, kinds_seen):
    _, num_classes = shards
    plain = make(shards, tmp_path)
    mixing = make(shards, tmp_path, mixup=settings)
    transform = mixing.mixup
    kinds = set()
    for k in range(6):  # crosses the epoch end (5 batches per epoch)
        raw, got = next(plain.train), next(mixing.train)
        assert torch.equal(raw["sample_id"], got["sample_id"])
        epoch, first_position = divmod(k, 5)
        draw = transform.draw(batch_generator(SEED, epoch, first_position * BATCH), 16, 16)
        kinds.add("none" if draw.lam == 1.0 else "cutmix" if draw.box else "mixup")
        images, targets = reference_mix(raw["rgb"], raw["label"], num_classes, transform.label_smoothing, draw)
        torch.testing.assert_close(got["rgb"], images, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["label"], targets, rtol=0, atol=1e-6)
        assert got["label"].shape == (BATCH, num_classes) and got["label"].dtype == torch.float32
        torch.testing.assert_close(got["label"].sum(1), torch.ones(BATCH))
    assert kinds == kinds_seen
    # Validation batches are never mixed and keep their integer labels.
    val = next(mixing.val_batches(1))
    assert val["label"].dtype == torch.int64 and torch.equal(val["rgb"], next(plain.val_batches(1))["rgb"])


def test_extra_labels_are_mixed_with_the_same_draw_as_the_label():
    transform = MixupCutmix(num_classes=5, extra_labels={"colour_label": 8, "shape_label": 4}, label_smoothing=0.1)
    images = torch.rand(BATCH, 3, 16, 16)
    labels = {"label": torch.tensor([0, 4, 2, 1]), "colour_label": torch.tensor([7, 0, 3, 3])}
    labels["shape_label"] = torch.tensor([1, 2, 3, 0])
    for seed in range(6):
        draw = transform.draw(torch.Generator().manual_seed(seed), 16, 16)
        mixed = transform({"rgb": images, **labels}, torch.Generator().manual_seed(seed))
        for key, count in {"label": 5, "colour_label": 8, "shape_label": 4}.items():
            expected_images, expected = reference_mix(images, labels[key], count, 0.1, draw)
            torch.testing.assert_close(mixed[key], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(mixed["rgb"], expected_images, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"mixup needs batch\['shape_label'\]"):
        transform({"rgb": images, "label": labels["label"], "colour_label": labels["colour_label"]}, None)
    with pytest.raises(ValueError, match=r"'colour_label' must lie in \[0, 8\)"):
        transform({"rgb": images, **labels, "colour_label": torch.tensor([0, 8, 1, 1])}, torch.Generator())
    with pytest.raises(ValueError, match=r"mixup needs >= 1 class for 'shape_label', got 0"):
        MixupCutmix(num_classes=5, extra_labels={"shape_label": 0})


def test_the_draw_follows_timm_batch_mode():
    """lam ~ Beta(alpha, alpha); the CutMix box has sides int(H sqrt(1-lam)) around its centre, clipped, and lam
    becomes the uncovered fraction."""
    cutmix = MixupCutmix(num_classes=3, mixup_alpha=0.0, cutmix_alpha=1.0)
    for seed in range(50):
        generator = torch.Generator().manual_seed(seed)
        draw = cutmix.draw(generator, 12, 20)
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=torch.Generator().manual_seed(seed))))
        rng.random()  # the draw against ``prob`` comes first
        lam = rng.beta(1.0, 1.0)
        cy, cx = rng.integers(12), rng.integers(20)
        cut_h, cut_w = int(12 * math.sqrt(1 - lam)), int(20 * math.sqrt(1 - lam))
        box = (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, 12), max(cx - cut_w // 2, 0), min(cx + cut_w // 2, 20))
        area = (box[1] - box[0]) * (box[3] - box[2])
        assert draw == MixDraw(1 - area / 240, box)
    mixup = MixupCutmix(num_classes=3, mixup_alpha=0.4, cutmix_alpha=0.0)
    lams = [mixup.draw(torch.Generator().manual_seed(s), 8, 8).lam for s in range(2000)]
    assert abs(np.mean(lams) - 0.5) < 0.03 and abs(np.var(lams) - 0.25 / (2 * 0.4 + 1)) < 0.02  # Beta(0.4, 0.4)
    switching = MixupCutmix(num_classes=3, switch_prob=0.3)
    boxes = [switching.draw(torch.Generator().manual_seed(s), 8, 8).box is not None for s in range(2000)]
    assert abs(np.mean(boxes) - 0.3) < 0.04


def test_mixed_batches_do_not_depend_on_workers_and_resume_exactly(shards, tmp_path):
    settings = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}
    serial = make(shards, tmp_path, mixup=settings)
    expected = [next(serial.train) for _ in range(6)]
    workers = make(shards, tmp_path, mixup=settings, num_workers=2)
    for want in expected:
        got = next(workers.train)
        assert torch.equal(got["sample_id"], want["sample_id"])
        assert torch.equal(got["rgb"], want["rgb"]) and torch.equal(got["label"], want["label"])
    first = make(shards, tmp_path, mixup=settings)
    for _ in range(3):
        next(first.train)
    resumed = make(shards, tmp_path, mixup=settings, num_workers=2)
    resumed.train.load_state_dict(first.train.state_dict())
    for want in expected[3:]:
        got = next(resumed.train)
        assert torch.equal(got["rgb"], want["rgb"]) and torch.equal(got["label"], want["label"])


def test_the_largest_batch_has_soft_targets(shards, tmp_path):
    _, num_classes = shards
    real = next(make(shards, tmp_path, mixup={}).train)
    largest = MultimodalData.largest_batch(
        modalities=["rgb@16", "label"], image_size=16, batch_size=BATCH, mixup={"num_classes": num_classes}
    ).batch
    assert {k: (v.shape, v.dtype) for k, v in largest.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}
    assert torch.equal(largest["label"].sum(1), torch.ones(BATCH))


def test_bad_mixup_settings_are_one_line_errors(shards, tmp_path):
    pattern, num_classes = shards
    config = {
        "_target_": "polymodal.data.multimodal.data_module.MultimodalData",
        "train": pattern,
        "val": None,
        "modalities": ["rgb", "label"],
        "image_size": 16,
        "batch_size": 2,
        "mixup": {"num_classes": num_classes, "mixup_alfa": 0.8},
    }
    with pytest.raises(
        ConfigError, match=r"^unknown key 'data.mixup.mixup_alfa' — did you mean 'data.mixup.mixup_alpha'"
    ):
        instantiate(config, cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data.mixup.prob: expected float, got 'high'"):
        make(shards, tmp_path, mixup={"prob": "high"})
    with pytest.raises(ConfigError, match="missing required key 'data.mixup.num_classes'"):
        instantiate({**config, "mixup": {"prob": 0.5}}, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"prob must be in \[0, 1\], got 1.5"):
        make(shards, tmp_path, mixup={"prob": 1.5})
    with pytest.raises(ValueError, match=r"data.mixup mixes \['label'\], which are not in modalities"):
        make(shards, tmp_path, mixup={}, modalities=["rgb"])
    transform = MixupCutmix(num_classes=2)
    batch = {"rgb": torch.zeros(2, 3, 4, 4), "label": torch.tensor([0, 2])}
    with pytest.raises(ValueError, match=r"'label' must lie in \[0, 2\)"):
        transform(batch, torch.Generator())
    with pytest.raises(ValueError, match=r"rows \[1\] lack one"):
        transform({**batch, "label": torch.tensor([0, 1]), "label_present": torch.tensor([True, False])}, None)
    with pytest.raises(ValueError, match="float images"):
        transform({**batch, "rgb": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}, torch.Generator())
