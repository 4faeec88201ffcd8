import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.synth.labels import ATTRIBUTE_CLASSES, sample_labels
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import CLASS_NAMES
from polymodal.data.synth.writers import MODALITY_EXTENSIONS, write_imagefolder, write_shards


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}, [m.name for m in tar.getmembers()]


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_have_identical_keys_in_identical_order(tmp_path, workers):
    written = write_shards(tmp_path, num_samples=7, samples_per_shard=3, seed=2, workers=workers)
    assert len(written) == 3 * len(MODALITY_EXTENSIONS) and all(path.is_file() for path in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MODALITY_EXTENSIONS)
    for shard, expected in enumerate([range(0, 3), range(3, 6), range(6, 7)]):
        for modality, ext in MODALITY_EXTENSIONS.items():
            _, names = _members(tmp_path / modality / f"shard-{shard:05d}.tar")
            assert names == [f"{i:08d}.{ext}" for i in expected]


def test_shard_members_decode_back_to_the_sample(tmp_path):
    write_shards(tmp_path, num_samples=2, samples_per_shard=2, seed=4)
    sample = render_scene(4, 1)
    key = "00000001"

    def read(modality):
        return _members(tmp_path / modality / "shard-00000.tar")[0][f"{key}.{MODALITY_EXTENSIONS[modality]}"]

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(read("rgb")))), sample["rgb"].permute(1, 2, 0).numpy())
    depth = np.load(io.BytesIO(read("depth")), allow_pickle=False)
    assert depth.dtype == np.float32 and np.array_equal(depth, sample["depth"][0].numpy())
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(read("semseg")))), sample["semseg"].numpy())
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(read("edges")))), sample["edges"][0].numpy())
    normal = np.asarray(Image.open(io.BytesIO(read("normal")))).astype(np.float32) / 255 * 2 - 1
    assert np.abs(normal - sample["normal"].permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6
    det = json.loads(read("det"))
    assert (
        torch.equal(torch.tensor(det["boxes"]), sample["det"]["boxes"])
        and det["labels"] == sample["det"]["labels"].tolist()
    )
    assert len(det["names"]) == len(det["labels"])
    assert json.loads(read("caption")) == sample["caption"]
    assert int(read("label").decode()) == int(sample["label"])
    for modality in ("colour_label", "shape_label"):
        assert read(modality) == str(int(sample[modality])).encode()
    assert {"label", "colour_label", "shape_label"} <= set(MODALITY_EXTENSIONS)  # shards carry every label


def test_shards_bad_args(tmp_path):
    with pytest.raises(ValueError, match="samples_per_shard"):
        write_shards(tmp_path, 4, 0)
    with pytest.raises(ValueError, match="num_samples"):
        write_shards(tmp_path, 0, 4)
    with pytest.raises(ValueError, match="modalities"):
        write_shards(tmp_path, 4, 4, modalities=("rgb", "lidar"))


def test_imagefolder_layout(tmp_path):
    write_imagefolder(tmp_path, num_samples=10, val_fraction=0.2, seed=1)
    files = sorted(tmp_path.glob("*/*/*.png"))
    assert len(files) == 10
    for path in files:
        index = int(path.stem)
        assert path.parent.parent.name == ("val" if index >= 8 else "train")
        assert path.parent.name == CLASS_NAMES[int(render_scene(1, index)["label"])]
    assert json.loads((tmp_path / "classes.json").read_text()) == CLASS_NAMES
    with pytest.raises(ValueError, match="val_fraction"):
        write_imagefolder(tmp_path, 10, val_fraction=1.0)


@pytest.mark.parametrize("label", ["colour", "shape"])
def test_imagefolder_class_is_the_chosen_attribute_and_every_split_records_all_of_them(tmp_path, label):
    write_imagefolder(tmp_path, num_samples=6, val_fraction=0.5, seed=3, size=16, workers=2, label=label)
    names = ATTRIBUTE_CLASSES[label]
    assert json.loads((tmp_path / "classes.json").read_text()) == list(names)
    for split, indices in (("train", range(0, 3)), ("val", range(3, 6))):
        attributes = json.loads((tmp_path / split / "attributes.json").read_text())
        assert attributes["classes"] == {name: list(classes) for name, classes in ATTRIBUTE_CLASSES.items()}
        expected = {f"{i:08d}": sample_labels(render_scene(3, i, 16)) for i in indices}
        assert attributes["labels"] == expected
        for key, labels in expected.items():
            assert (tmp_path / split / names[labels[label]] / f"{key}.png").is_file()
    assert len(list(tmp_path.glob("*/*/*.png"))) == 6


def test_imagefolder_refuses_an_unknown_attribute(tmp_path):
    with pytest.raises(ValueError, match="unknown label attribute 'size'"):
        write_imagefolder(tmp_path, 4, label="size")
    assert not any(tmp_path.iterdir())
