"""ImageSplit reads every scene label: an ImageFolder's attribute, and the label modalities of synthetic shards
with their class names."""

import pytest

from polymodal.config.errors import ConfigError
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.synth.labels import ATTRIBUTE_CLASSES
from polymodal.data.synth.writers import write_imagefolder, write_shards
from polymodal.train.evaluators.data import ImageSplit

LABELS = {"count": "label", "colour": "colour_label", "shape": "shape_label"}


def test_scene_labels_from_shards_and_from_an_imagefolder_attribute(tmp_path):
    write_shards(tmp_path / "shards", num_samples=12, samples_per_shard=12, seed=4, size=32,
                 modalities=("rgb", *LABELS.values()))  # fmt: skip
    pattern = f"{tmp_path}/shards/[rgb,{','.join(LABELS.values())}]/shard-00000.tar"
    reference = MultimodalShards(pattern, modalities=list(LABELS.values()), cache_dir=str(tmp_path))
    write_imagefolder(tmp_path / "folder", num_samples=12, val_fraction=0.5, seed=4, size=32)
    for attribute, modality in LABELS.items():
        split = ImageSplit(pattern, format="shards", image_size=16, label_key=modality, cache_dir=str(tmp_path))
        assert split.class_names == list(ATTRIBUTE_CLASSES[attribute])
        assert split.load(range(6))["label"].tolist() == [int(reference[i][modality]) for i in range(6)]
        folder = ImageSplit(str(tmp_path / "folder"), split="val", image_size=16, attribute=attribute)
        assert folder.class_names == list(ATTRIBUTE_CLASSES[attribute])
        # the ImageFolder's val split holds scenes 6..11 of the same seed, ordered by class folder
        expected = sorted(int(reference[i][modality]) for i in range(6, 12))
        assert sorted(folder.load(range(6))["label"].tolist()) == expected
    with pytest.raises(ConfigError, match="attribute picks an ImageFolder's label"):
        ImageSplit(pattern, format="shards", label_key="label", attribute="colour")


def test_max_samples_spreads_over_the_split_not_its_first_classes(eval_data):
    whole = ImageSplit(str(eval_data["folder"]), split="train", image_size=32)
    labels = whole.load(range(len(whole)))["label"].tolist()
    assert labels == sorted(labels)  # an ImageFolder lists its samples class by class
    subset = ImageSplit(str(eval_data["folder"]), split="train", image_size=32, max_samples=5)
    expected = [labels[index * len(labels) // 5] for index in range(5)]  # evenly spaced, from the first on
    assert len(subset) == 5 and subset.load(range(5))["label"].tolist() == expected
    assert len(set(expected)) > 1 and expected != labels[:5]


def test_max_samples_below_one_is_a_config_error(eval_data):
    with pytest.raises(ConfigError, match="max_samples must be >= 1"):
        ImageSplit(str(eval_data["folder"]), split="train", max_samples=0)
