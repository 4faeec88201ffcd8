"""Map-style classification dataset over an ImageFolder tree ``root/<split>/<class name>/<file>.(png|jpg|jpeg)``.

Class ids. Label ``i`` is the ``i``-th entry of the class list, taken from (first that applies):

1. the ``classes`` argument;
2. ``root/classes.json``, a JSON list of class names in label-id order (for the synthetic scenes: the class names
   of the attribute ``polymodal synth --label`` chose, see :mod:`polymodal.data.synth.labels`; by default the
   object count, "one object", "two objects", ...);
3. the sorted folder names of the split, torchvision's convention. Alphabetical order rarely matches the
   ids a data set was labelled with ("five objects" would come first), hence 1. and 2.

Other attributes. A split may hold ``<split>/attributes.json`` (:data:`ATTRIBUTES_FILE`) with more labels of the
same images, ``{"classes": {attribute: [class names in id order]}, "labels": {file stem: {attribute: class id}}}``;
``attribute=`` then makes ``label`` (and the captions) that attribute's, whatever folder an image sits in (file
names must then be unique in the split), and ``extra_labels={key: attribute}`` adds each such attribute's class id
to every sample as ``key`` (int64), for a model with one head per attribute. The synthetic scenes carry ``count``,
``colour``, ``shape`` and ``object`` there, so one tree serves a probe of each.

Samples are ordered by (folder) class id, then file name, so sample ids are stable across runs and machines and do
not depend on ``attribute``. Files with other extensions are ignored. A listed class may lack a folder in a split
(a small val split may miss a class), but an existing class folder without images, or a split without any image,
is a ``ValueError``; so is an ``attribute`` the split's attributes file lacks, for any of its images.
A file that cannot be decoded raises :class:`SampleError` (``"corrupt_image"``, or ``"too_large"``, see
:func:`~polymodal.data.multimodal.decode.decode_pixels`) for the loader to count and skip.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from polymodal.data.multimodal.decode import DecodeError, decode_pixels
from polymodal.data.multimodal.skips import SampleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLASSES_FILE = "classes.json"
ATTRIBUTES_FILE = "attributes.json"  # in each split folder
DEFAULT_CAPTION_TEMPLATES = ("a photo of {}.", "a rendering of {}.", "a picture with {}.")


def read_class_names(root: Path, split_dir: Path) -> list[str]:
    """The class list of ``root`` when none is given: ``root/classes.json`` if present, else sorted folders."""
    classes_file = root / CLASSES_FILE
    if classes_file.is_file():
        names = json.loads(classes_file.read_text())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{classes_file} must hold a JSON list of class-name strings, got {names!r}")
        return names
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())


def read_attribute_labels(split_dir: Path, attribute: str) -> tuple[list[str], dict[str, int]]:
    """The class names of ``attribute`` and the class id of each file stem, from ``split_dir/attributes.json``."""
    path = split_dir / ATTRIBUTES_FILE
    if not path.is_file():
        raise ValueError(f"label attribute {attribute!r} asked for, but {path} does not exist")
    document = json.loads(path.read_text())
    classes, labels = (document.get("classes"), document.get("labels")) if isinstance(document, dict) else (None, None)
    if not isinstance(classes, dict) or not isinstance(labels, dict):
        raise ValueError(f"{path} must hold a JSON object with a 'classes' and a 'labels' object")
    names = classes.get(attribute)
    if names is None:
        raise ValueError(f"{path} has no label attribute {attribute!r}; it has {sorted(classes)}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: the classes of {attribute!r} must be a list of class-name strings, got {names!r}")
    ids = {}
    for stem, entry in labels.items():
        value = entry.get(attribute) if isinstance(entry, dict) else None
        if type(value) is not int or not 0 <= value < len(names):
            raise ValueError(f"{path}: {stem!r} has {attribute!r} = {value!r}, not a class id in [0, {len(names)})")
        ids[stem] = value
    return names, ids


def decode_rgb_file(path: Path, sample_id: int) -> torch.Tensor:
    """uint8 ``[3, H, W]`` pixels of an image file (grey and palette images are converted to RGB)."""
    try:
        pixels = decode_pixels(path, str(path), "RGB")
    except DecodeError as error:
        raise SampleError(error.reason, sample_id, str(error)) from error
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset):
    """``{"rgb": uint8 [3,H,W], "label": int64 scalar, "caption": [template.format(class name), ...]}``.

    Args:
        root: the tree's root, holding one folder per split (and optionally ``classes.json``).
        split: the split folder to read (``"train"``, ``"val"``, ...).
        classes: class names in label-id order; overrides ``classes.json`` and the folder names.
        caption_templates: each is formatted with the class name to give one caption phrasing.
        attribute: take ``label`` from this attribute of ``<split>/attributes.json`` instead of the class folder;
            ``classes`` then still names the folders, and ``self.classes`` becomes the attribute's class names.
        extra_labels: ``{sample key: attribute}``: each sample also holds that attribute's class id under the key.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: Sequence[str] | None = None,
        caption_templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES,
        attribute: str | None = None,
        extra_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise ValueError(f"ImageFolder split {split!r} not found: {split_dir} is not a directory")
        if not caption_templates or not all("{}" in t for t in caption_templates):
            raise ValueError(f"caption_templates must be non-empty and each contain '{{}}', got {caption_templates!r}")
        self.classes = list(classes) if classes is not None else read_class_names(self.root, split_dir)
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class list of {split_dir} must be non-empty and without duplicates: {self.classes}")
        unlisted = sorted({e.name for e in split_dir.iterdir() if e.is_dir()} - set(self.classes))
        if unlisted:
            raise ValueError(f"{split_dir} has class folders {unlisted} that are not in the class list {self.classes}")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                continue  # a listed class the split lacks (a small val split may miss one)
            files = _image_files(class_dir)
            if not files:
                raise ValueError(f"class folder {class_dir} (label {label}) has no .png/.jpg/.jpeg images")
            self.samples.extend((path, label) for path in files)
        if not self.samples:
            raise ValueError(f"{split_dir} has no images in any class folder of {self.classes}")
        if attribute is not None:
            self.classes, labels = _attribute_ids(split_dir, attribute, self.samples)
            self.samples = [(path, label) for (path, _), label in zip(self.samples, labels, strict=True)]
        clashes = sorted({"rgb", "label", "caption"} & set(extra_labels or {}))
        if clashes:
            raise ValueError(f"extra_labels keys {clashes} would overwrite the sample's own rgb/label/caption")
        self.extra_labels = {
            key: _attribute_ids(split_dir, name, self.samples)[1] for key, name in (extra_labels or {}).items()
        }
        self.captions = [[t.format(name) for t in caption_templates] for name in self.classes]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        path, label = self.samples[sample_id]
        return {
            "rgb": decode_rgb_file(path, sample_id),
            "label": torch.tensor(label, dtype=torch.int64),
            "caption": list(self.captions[label]),
            **{key: torch.tensor(ids[sample_id], dtype=torch.int64) for key, ids in self.extra_labels.items()},
        }


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _attribute_ids(split_dir: Path, attribute: str, samples: list[tuple[Path, int]]) -> tuple[list[str], list[int]]:
    """``attribute``'s class names, and the ``attribute`` class id of each of ``samples``, in their order."""
    stems = Counter(path.stem for path, _ in samples)
    repeated = sorted(stem for stem, count in stems.items() if count > 1)
    if repeated:
        raise ValueError(
            f"{split_dir}: file names {repeated[:3]} repeat across class folders: {attribute!r} is "
            f"looked up by file name in {ATTRIBUTES_FILE}"
        )
    classes, ids = read_attribute_labels(split_dir, attribute)
    missing = [path.name for path, _ in samples if path.stem not in ids]
    if missing:
        raise ValueError(f"{split_dir / ATTRIBUTES_FILE} has no entry for {len(missing)} images, e.g. {missing[:3]}")
    return classes, [ids[path.stem] for path, _ in samples]
