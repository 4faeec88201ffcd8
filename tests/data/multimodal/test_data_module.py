"""MultimodalData: batches, exact resume, mixtures with absent modalities, val batches, config instantiation."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.config import instantiate
from polymodal.data.multimodal.data_module import MultimodalData
from polymodal.data.multimodal.prefix import RandomPrefixLengths
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.synth.writers import write_imagefolder, write_shards

FULL = ("rgb", "depth", "semseg", "caption", "label")
NO_DEPTH = ("rgb", "semseg", "caption", "label")
SPEC = ["rgb@32", "depth@16", "semseg", "caption", "label"]


def pattern(root, modalities, shards):
    return f"{root}/[{','.join(modalities)}]/shard-{{00000..{shards - 1:05d}}}.tar"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    full = tmp_path_factory.mktemp("full")
    no_depth = tmp_path_factory.mktemp("no_depth")
    write_shards(full, num_samples=20, samples_per_shard=10, seed=1, size=64, modalities=FULL)
    write_shards(no_depth, num_samples=12, samples_per_shard=6, seed=2, size=64, modalities=NO_DEPTH)
    return {"full": pattern(full, FULL, 2), "no_depth": pattern(no_depth, NO_DEPTH, 2), "full_root": full}


def make(trees, cache, **overrides):
    args = dict(
        train=trees["full"],
        val=trees["full"],
        modalities=SPEC,
        image_size=32,
        batch_size=4,
        cache_dir=str(cache),
        seed=5,
    )
    return MultimodalData(**{**args, **overrides})


def test_train_batches_have_the_configured_keys_shapes_and_values(trees, tmp_path):
    data = make(trees, tmp_path)
    batch = next(data.train)
    assert batch["rgb"].shape == (4, 3, 32, 32) and batch["rgb"].dtype == torch.float32
    assert 0.0 <= batch["rgb"].min() and batch["rgb"].max() <= 1.0
    assert batch["depth"].shape == (4, 1, 16, 16) and batch["depth"].dtype == torch.float32
    assert batch["semseg"].shape == (4, 32, 32) and batch["semseg"].dtype == torch.int64
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert len(batch["caption"]) == 4 and all(isinstance(c, list) and c for c in batch["caption"])
    for name in ("rgb", "depth", "semseg", "caption", "label"):
        assert batch[f"{name}_present"].tolist() == [True] * 4
    raw = MultimodalShards(trees["full"], cache_dir=tmp_path / "shard_index")
    for row, sample_id in enumerate(batch["sample_id"].tolist()):
        assert int(batch["label"][row]) == int(raw[sample_id]["label"])
        assert batch["caption"][row] == raw[sample_id]["caption"]
    assert data.tokens_per_sample is None  # images, not tokens: the trainer logs samples/s only
    assert data.info() == {"format": "shards", "modalities": list(FULL), "train_samples": 20, "val_samples": 20}
    assert data.skip_counts() == {}


def test_state_dict_round_trip_resumes_at_the_next_batch(trees, tmp_path):
    uninterrupted = make(trees, tmp_path)
    expected = [next(uninterrupted.train) for _ in range(5)]  # crosses the epoch end (5 batches per epoch)
    first = make(trees, tmp_path)
    for _ in range(2):
        next(first.train)
    state = first.train.state_dict()
    resumed = make(trees, tmp_path)
    resumed.train.load_state_dict(state)
    for want in expected[2:]:
        got = next(resumed.train)
        assert torch.equal(got["sample_id"], want["sample_id"])
        assert torch.equal(got["rgb"], want["rgb"]) and torch.equal(got["depth"], want["depth"])


def test_mixture_marks_depth_absent_for_the_source_without_it(trees, tmp_path):
    data = make(
        trees,
        tmp_path,
        train={"full": trees["full"], "no_depth": trees["no_depth"]},
        weights={"full": 1.0, "no_depth": 1.0},
    )
    seen = set()
    for _ in range(5):
        batch = next(data.train)
        for row, source in enumerate(batch["source"]):
            seen.add(source)
            assert bool(batch["depth_present"][row]) == (source == "full")
            assert batch["rgb_present"][row] and batch["label_present"][row]
            if source == "no_depth":
                assert torch.equal(batch["depth"][row], torch.zeros(1, 16, 16))
            else:
                assert batch["depth"][row].min() > 0
    assert seen == {"full", "no_depth"}
    info = data.info()
    assert info["train_samples"] == 32 and info["train_samples/full"] == 20 and info["train_samples/no_depth"] == 12


def test_val_batches_are_centre_crops_in_id_order_and_the_same_every_call(trees, tmp_path):
    data = make(trees, tmp_path, modalities=["rgb", "depth"], image_size=64)
    first, second = list(data.val_batches(3)), list(data.val_batches(None))
    assert len(first) == 3 and len(second) == 5
    raw = MultimodalShards(trees["full"], cache_dir=tmp_path / "shard_index")
    for k, (a, b) in enumerate(zip(first, second[:3], strict=True)):
        assert a["sample_id"].tolist() == list(range(4 * k, 4 * k + 4))
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["depth"], b["depth"])
        # The centre square crop of a 64x64 image resized to 64 is the image itself.
        for row, sample_id in enumerate(a["sample_id"].tolist()):
            assert torch.equal(a["rgb"][row], raw[sample_id]["rgb"].float() / 255.0)
            assert torch.equal(a["depth"][row], raw[sample_id]["depth"])


def test_instantiable_from_a_config_dict_with_trainer_kwargs(trees, tmp_path):
    config = {
        "_target_": "polymodal.data.multimodal.data_module.MultimodalData",
        "train": trees["full"],
        "val": None,
        "modalities": ["rgb@16", "label"],
        "image_size": 16,
        "batch_size": 2,
        "scale": [0.5, 1.0],
        "cache_dir": str(tmp_path),
    }
    ranks = [instantiate(config, seed=3, dp_rank=r, dp_world=2) for r in range(2)]
    assert all(isinstance(data, MultimodalData) for data in ranks)
    single = instantiate(config, seed=3, dp_rank=0, dp_world=1, batch_size=4)
    rows = torch.cat([next(data.train)["sample_id"] for data in ranks])
    assert torch.equal(rows, next(single.train)["sample_id"])
    with pytest.raises(ValueError, match="no validation set"):
        ranks[0].val_batches(1)


def test_imagefolder_format_reads_train_and_val_splits(tmp_path):
    classes = ["one object", "two objects"]
    for split, count in (("train", 4), ("val", 2)):
        for label, name in enumerate(classes):
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((20, 24, 3), 40 * label + i, dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "tree" / "classes.json").write_text('["one object", "two objects"]')
    root = str(tmp_path / "tree")
    data = MultimodalData(root, root, ["rgb", "label"], image_size=8, batch_size=2, format="imagefolder")
    batch = next(data.train)
    assert set(batch) == {"rgb", "rgb_present", "label", "label_present", "sample_id"}
    assert batch["rgb"].shape == (2, 3, 8, 8)
    val = list(data.val_batches(None))
    assert [b["label"].tolist() for b in val] == [[0, 0], [1, 1]]
    assert torch.allclose(val[1]["rgb"][1], torch.full((3, 8, 8), 41 / 255))
    assert data.info()["val_samples"] == 4


def test_truncated_tars_are_counted_once_on_rank_zero(trees, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trees["full_root"], copy)
    tar = copy / "depth" / "shard-00001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    broken = pattern(copy, FULL, 2)
    rank0 = make(trees, tmp_path, train=broken, val=None, dp_rank=0, dp_world=2, batch_size=2)
    rank1 = make(trees, tmp_path, train=broken, val=None, dp_rank=1, dp_world=2, batch_size=2)
    for _ in range(5):
        for rank in (rank0, rank1):
            assert next(rank.train)["depth_present"].all()  # samples cut off the tar were replaced
    assert rank0.skip_counts()["truncated_tar"] == 1
    assert "truncated_tar" not in rank1.skip_counts()
    assert rank0.skip_counts()["missing_member"] > 0 and rank1.skip_counts()["missing_member"] > 0


def flips_of_full_crops(data: MultimodalData, raw: MultimodalShards, batches: int) -> list[bool]:
    """Per training sample: True if its ``rgb`` is its source image mirrored, False if it is the image itself (a crop
    of the whole area at the source size is the image, pixel for pixel); anything else fails."""
    flips = []
    for _ in range(batches):
        batch = next(data.train)
        for row, sample_id in enumerate(batch["sample_id"].tolist()):
            plain = raw[sample_id]["rgb"].to(torch.float32) / 255.0
            flipped = torch.equal(batch["rgb"][row], plain.flip(-1))
            assert flipped or torch.equal(batch["rgb"][row], plain), sample_id
            flips.append(flipped)
    return flips


def test_hflip_zero_never_flips_and_the_default_flips_some(trees, tmp_path):
    raw = MultimodalShards(trees["full"], cache_dir=tmp_path / "shard_index")
    whole = dict(modalities=["rgb", "label"], image_size=64, scale=(1.0, 1.0))  # every crop: the whole image
    assert not any(flips_of_full_crops(make(trees, tmp_path, hflip=0.0, **whole), raw, batches=10))
    assert 0 < sum(flips_of_full_crops(make(trees, tmp_path, **whole), raw, batches=10)) < 40
    with pytest.raises(ValueError, match=r"hflip must be a probability in \[0, 1\], got 2"):
        make(trees, tmp_path, hflip=2)


def test_bad_configuration_is_a_clear_error(trees, tmp_path):
    with pytest.raises(ValueError, match="unknown data format 'webdataset'"):
        make(trees, tmp_path, format="webdataset")
    with pytest.raises(ValueError, match=r"modalities \['depth'\] are in none of the train sources"):
        make(trees, tmp_path, train=trees["no_depth"])
    with pytest.raises(ValueError, match="weights are only meaningful for a mixture"):
        make(trees, tmp_path, weights={"full": 1.0})
    with pytest.raises(ValueError, match="unknown modality 'sound'"):
        make(trees, tmp_path, modalities=["rgb", "sound"])
    with pytest.raises(ValueError, match="weights name"):
        make(trees, tmp_path, train={"full": trees["full"]}, weights={"other": 1.0})


def test_the_largest_batch_is_shaped_like_training_batches_without_reading_a_file(trees, tmp_path):
    """What ``polymodal plan`` measures: every tensor modality present, made from the config alone."""
    spec = ["rgb@32", "depth@16", "semseg", "label"]
    real = next(make(trees, tmp_path, modalities=spec).train)
    largest = MultimodalData.largest_batch(
        train="/no/such/shards", val=None, modalities=spec, image_size=32, batch_size=4
    )
    assert {key: (value.shape, value.dtype) for key, value in largest.batch.items()} == {
        key: (value.shape, value.dtype) for key, value in real.items()
    }
    assert largest.description == "4 samples of rgb 3x32x32, depth 1x16x16, semseg 32x32, label"
    with pytest.raises(ValueError, match=r"\['caption'\] are text of any length"):
        MultimodalData.largest_batch(modalities=SPEC, image_size=32, batch_size=4)


def test_the_largest_batch_carries_the_train_batch_transform_keys():
    """AIM's prefix lengths: the model reads them, so the planner's batch has them, drawn like the loader's."""
    largest = MultimodalData.largest_batch(
        modalities=["rgb"], image_size=32, batch_size=4, batch_transform=RandomPrefixLengths(num_patches=16)
    )
    lengths = largest.batch["prefix_lengths"]
    assert lengths.dtype == torch.int64 and lengths.shape == (4,)
    assert lengths.min() >= 1 and lengths.max() <= 15


def test_every_scene_label_reaches_the_batch_from_shards_and_from_an_imagefolder(tmp_path):
    labels = ("label", "colour_label", "shape_label")
    write_shards(tmp_path / "shards", num_samples=8, samples_per_shard=8, seed=3, size=32, modalities=("rgb", *labels))
    shards = pattern(tmp_path / "shards", ("rgb", *labels), 1)
    data = MultimodalData(shards, shards, ["rgb", *labels], image_size=16, batch_size=8, cache_dir=str(tmp_path))
    from_shards = next(iter(data.val_batches(None)))
    source = MultimodalShards(shards, modalities=list(labels))
    for name in labels:
        assert from_shards[name].dtype == torch.int64
        assert from_shards[name].tolist() == [int(source[i][name]) for i in range(8)]

    root = tmp_path / "tree"
    write_imagefolder(root, num_samples=8, val_fraction=0.5, seed=3, size=32, label="count")
    by_attribute = {}
    for attribute in ("count", "colour", "shape"):
        folder = MultimodalData(
            str(root), str(root), ["rgb", "label"], image_size=16, batch_size=4, format="imagefolder",
            label_attribute=attribute,
        )  # fmt: skip
        by_attribute[attribute] = next(iter(folder.val_batches(None)))["label"].tolist()
    # the imagefolder holds scenes 4..7 in val, the shards written with the same seed hold scenes 0..7
    for attribute, name in zip(("count", "colour", "shape"), labels, strict=True):
        assert sorted(by_attribute[attribute]) == sorted(from_shards[name][4:].tolist())
    # all three at once, under the shards' names: the same (count, colour, shape) triple for every scene
    every = MultimodalData(
        str(root), str(root), ["rgb", *labels], image_size=16, batch_size=4, format="imagefolder",
        label_attribute="count",
    )  # fmt: skip
    batch = next(iter(every.val_batches(None)))
    triples = sorted(zip(*(batch[name].tolist() for name in labels), strict=True))
    assert triples == sorted(zip(*(from_shards[name][4:].tolist() for name in labels), strict=True))
    with pytest.raises(ValueError, match="unknown label attribute 'size'"):
        MultimodalData(str(root), str(root), ["rgb", "label"], image_size=16, batch_size=4, format="imagefolder",
                       label_attribute="size")  # fmt: skip
    with pytest.raises(ValueError, match="label_attribute picks an ImageFolder's label"):
        make({"full": shards}, tmp_path, modalities=["rgb", "label"], label_attribute="colour")


def test_batch_transforms_from_the_config_run_on_train_and_validation_batches(trees, tmp_path):
    prefix = "polymodal.data.multimodal.prefix"
    config = {
        "_target_": "polymodal.data.multimodal.data_module.MultimodalData",
        "train": trees["full"],
        "val": trees["full"],
        "modalities": ["rgb@16"],
        "image_size": 16,
        "batch_size": 4,
        "cache_dir": str(tmp_path),
        "batch_transform": {"_target_": f"{prefix}.RandomPrefixLengths", "num_patches": 16},
        "eval_batch_transform": {"_target_": f"{prefix}.FixedPrefixLengths", "length": 1},
    }
    ranks = [instantiate(config, seed=3, dp_rank=r, dp_world=2) for r in range(2)]
    train = [[next(data.train)["prefix_lengths"] for _ in range(3)] for data in ranks]
    assert all(((lengths >= 1) & (lengths <= 15)).all() for lengths in train[0] + train[1])
    assert torch.cat(train[0]).tolist() != torch.cat(train[1]).tolist()
    assert [b["prefix_lengths"].tolist() for b in ranks[0].val_batches(2)] == [[1] * 4] * 2
