"""ImageFolderDataset: class ids from the argument / classes.json / sorted folders, captions, corrupt images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.multimodal.imagefolder import ImageFolderDataset
from polymodal.data.multimodal.loader import ResumableLoader
from polymodal.data.multimodal.skips import SampleError
from polymodal.data.synth.labels import ATTRIBUTE_CLASSES, sample_labels
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import CLASS_NAMES
from polymodal.data.synth.writers import write_imagefolder

# Alphabetical order ("five objects" < "one object" < "two objects") differs from the label-id order.
CLASSES = ["one object", "two objects", "five objects"]


def pixels(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_tree(root, split="train", per_class=2, classes=CLASSES):
    """Writes ``per_class`` PNGs per class; returns {(class name, file stem): pixels [H,W,3]}."""
    written = {}
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            array = pixels(10 * c + i)
            Image.fromarray(array).save(folder / f"{i:03d}.png")
            written[(name, f"{i:03d}")] = array
    return written


def check_samples(dataset, written, classes):
    assert len(dataset) == len(written)
    for sample_id, (path, _) in enumerate(dataset.samples):
        sample = dataset[sample_id]
        name = path.parent.name
        assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
        assert int(sample["label"]) == classes.index(name)
        assert sample["rgb"].dtype == torch.uint8
        assert torch.equal(sample["rgb"], torch.from_numpy(written[(name, path.stem)]).permute(2, 0, 1))


def test_explicit_classes_set_the_label_ids(tmp_path):
    written = make_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path, classes=CLASSES)
    assert dataset.classes == CLASSES
    check_samples(dataset, written, CLASSES)
    assert [int(dataset[i]["label"]) for i in range(len(dataset))] == [0, 0, 1, 1, 2, 2]


def test_classes_json_sets_the_label_ids(tmp_path):
    written = make_tree(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.classes == CLASSES
    check_samples(dataset, written, CLASSES)


def test_without_a_class_list_folders_are_sorted(tmp_path):
    written = make_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.classes == ["five objects", "one object", "two objects"]
    check_samples(dataset, written, dataset.classes)


def test_captions_format_every_template_with_the_class_name(tmp_path):
    make_tree(tmp_path)
    default = ImageFolderDataset(tmp_path, classes=CLASSES)
    assert default[2]["caption"] == [
        "a photo of two objects.",
        "a rendering of two objects.",
        "a picture with two objects.",
    ]
    custom = ImageFolderDataset(tmp_path, classes=CLASSES, caption_templates=["{} here"])
    assert custom[5]["caption"] == ["five objects here"]


def test_a_class_without_a_folder_in_the_split_keeps_its_label_id(tmp_path):
    written = make_tree(tmp_path, classes=["one object", "five objects"])
    dataset = ImageFolderDataset(tmp_path, classes=CLASSES)
    check_samples(dataset, written, CLASSES)
    assert [int(dataset[i]["label"]) for i in range(len(dataset))] == [0, 0, 2, 2]


def test_synthetic_imagefolder_labels_match_the_rendered_scenes(tmp_path):
    write_imagefolder(tmp_path, num_samples=8, val_fraction=0.25, seed=4, size=16)
    dataset = ImageFolderDataset(tmp_path, classes=CLASS_NAMES)
    assert len(dataset) == 6
    for sample_id, (path, _) in enumerate(dataset.samples):
        scene = render_scene(4, int(path.stem), 16)
        assert int(dataset[sample_id]["label"]) == int(scene["label"])
        assert torch.equal(dataset[sample_id]["rgb"], scene["rgb"])


def test_any_attribute_of_a_synthetic_tree_can_be_the_label(tmp_path):
    write_imagefolder(tmp_path, num_samples=8, val_fraction=0.25, seed=4, size=16, label="colour")
    by_folder = ImageFolderDataset(tmp_path, split="val")
    assert by_folder.classes == list(ATTRIBUTE_CLASSES["colour"])
    order = [path for path, _ in by_folder.samples]
    for attribute, names in ATTRIBUTE_CLASSES.items():
        dataset = ImageFolderDataset(tmp_path, split="val", attribute=attribute)
        assert dataset.classes == list(names)
        assert [path for path, _ in dataset.samples] == order  # sample ids do not depend on the attribute
        for sample_id, path in enumerate(order):
            scene = render_scene(4, int(path.stem), 16)
            sample = dataset[sample_id]
            assert int(sample["label"]) == sample_labels(scene)[attribute]
            assert sample["caption"][0] == f"a photo of {names[sample_labels(scene)[attribute]]}."
            assert torch.equal(sample["rgb"], scene["rgb"])
            if attribute == "colour":
                assert int(sample["label"]) == int(by_folder[sample_id]["label"])


def test_extra_labels_give_every_attribute_of_a_synthetic_tree_at_once(tmp_path):
    write_imagefolder(tmp_path, num_samples=8, val_fraction=0.25, seed=4, size=16, label="object")
    extra = {"colour_label": "colour", "shape_label": "shape"}
    dataset = ImageFolderDataset(tmp_path, split="train", attribute="count", extra_labels=extra)
    plain = ImageFolderDataset(tmp_path, split="train")
    assert [path for path, _ in dataset.samples] == [path for path, _ in plain.samples]
    for sample_id, (path, _) in enumerate(dataset.samples):
        labels = sample_labels(render_scene(4, int(path.stem), 16))
        sample = dataset[sample_id]
        assert int(sample["label"]) == labels["count"]
        assert {key: (int(sample[key]), sample[key].dtype) for key in extra} == {
            key: (labels[attribute], torch.int64) for key, attribute in extra.items()
        }
    with pytest.raises(ValueError, match=r"extra_labels keys \['label'\] would overwrite"):
        ImageFolderDataset(tmp_path, extra_labels={"label": "shape"})
    with pytest.raises(ValueError, match="has no label attribute 'size'"):
        ImageFolderDataset(tmp_path, extra_labels={"size_label": "size"})


def write_attributes(root, document, split="train"):
    (root / split / "attributes.json").write_text(json.dumps(document))


def test_attribute_labels_override_the_folder_class(tmp_path):
    written = make_tree(tmp_path, per_class=2, classes=["two objects"])
    labels = {"000": {"size": 1}, "001": {"size": 0}, "002": {"size": 0}}  # an entry without an image is fine
    write_attributes(tmp_path, {"classes": {"size": ["small", "large"]}, "labels": labels})
    dataset = ImageFolderDataset(tmp_path, classes=CLASSES, attribute="size", caption_templates=["{}"])
    assert len(dataset) == len(written) and dataset.classes == ["small", "large"]
    assert [int(dataset[i]["label"]) for i in range(2)] == [1, 0]
    assert [dataset[i]["caption"] for i in range(2)] == [["large"], ["small"]]
    assert torch.equal(dataset[1]["rgb"], torch.from_numpy(written[("two objects", "001")]).permute(2, 0, 1))


@pytest.mark.parametrize(
    "document, message",
    [
        (None, "'size' asked for, but .*attributes.json does not exist"),
        (["size"], "must hold a JSON object with a 'classes' and a 'labels' object"),
        ({"classes": {"colour": ["red"]}, "labels": {}}, r"has no label attribute 'size'; it has \['colour'\]"),
        ({"classes": {"size": "small"}, "labels": {}}, "classes of 'size' must be a list of class-name strings"),
        ({"classes": {"size": ["small"]}, "labels": {"000": {"size": 1}}}, r"'000' has 'size' = 1, not a class id"),
        ({"classes": {"size": ["small"]}, "labels": {"000": {"colour": 0}}}, "'000' has 'size' = None"),
        (
            {"classes": {"size": ["small"]}, "labels": {"000": {"size": 0}}},
            r"has no entry for 1 images, e.g. \[.001.png.\]",
        ),
    ],
)
def test_bad_attribute_files_are_clear_errors(tmp_path, document, message):
    make_tree(tmp_path, per_class=2, classes=["one object"])
    if document is not None:
        write_attributes(tmp_path, document)
    with pytest.raises(ValueError, match=message):
        ImageFolderDataset(tmp_path, classes=CLASSES, attribute="size")


def test_attributes_need_file_names_unique_in_the_split(tmp_path):
    make_tree(tmp_path)  # 000.png and 001.png in every class folder
    write_attributes(tmp_path, {"classes": {"size": ["small"]}, "labels": {"000": {"size": 0}, "001": {"size": 0}}})
    with pytest.raises(ValueError, match=r"file names \['000', '001'\] repeat across class folders"):
        ImageFolderDataset(tmp_path, classes=CLASSES, attribute="size")


def test_grey_images_become_three_channels_and_other_files_are_ignored(tmp_path):
    folder = tmp_path / "val" / "one object"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((4, 5), 7, dtype=np.uint8)).save(folder / "a.PNG")
    (folder / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, split="val")
    assert len(dataset) == 1
    assert torch.equal(dataset[0]["rgb"], torch.full((3, 4, 5), 7, dtype=torch.uint8))


def test_corrupt_image_raises_a_sample_error_the_loader_skips(tmp_path):
    make_tree(tmp_path, per_class=4)
    dataset = ImageFolderDataset(tmp_path, classes=CLASSES)
    broken_id = 5
    dataset.samples[broken_id][0].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SampleError) as caught:
        dataset[broken_id]
    assert caught.value.reason == "corrupt_image" and caught.value.sample_id == broken_id
    loader = ResumableLoader(dataset, batch_size=4, seed=0, shuffle=False)
    seen = torch.cat([next(loader)["sample_id"] for _ in range(3)])
    assert broken_id not in seen.tolist() and len(seen) == 12
    assert loader.skip_counts() == {"corrupt_image": 1}


def test_bad_trees_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="split 'train' not found"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no images in any class folder"):
        ImageFolderDataset(tmp_path, classes=CLASSES)
    (tmp_path / "train").rmdir()
    make_tree(tmp_path)
    (tmp_path / "train" / "four objects").mkdir()
    with pytest.raises(ValueError, match="four objects \\(label 3\\) has no .png"):
        ImageFolderDataset(tmp_path, classes=[*CLASSES, "four objects"])
    with pytest.raises(ValueError, match=r"class folders \['four objects'\] that are not in the class list"):
        ImageFolderDataset(tmp_path, classes=CLASSES)
    (tmp_path / "classes.json").write_text(json.dumps({"one": 1}))
    with pytest.raises(ValueError, match="classes.json must hold a JSON list"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="duplicates"):
        ImageFolderDataset(tmp_path, classes=["one object", "one object"])
    with pytest.raises(ValueError, match="caption_templates"):
        ImageFolderDataset(tmp_path, classes=[*CLASSES, "four objects"], caption_templates=["no slot"])
