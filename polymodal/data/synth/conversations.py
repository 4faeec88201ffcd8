"""A Lumina-mGPT conversation corpus of the synthetic scenes, optionally sprinkled with bad items.

An item is ``{"id": str, "conversations": [{"from": "human" | "gpt", "value": str}, ...], "image": [paths]}``: each
``<|image|>`` in a value stands for the next image of the list, the roles alternate human, gpt, human, ... and a
text-only item has ``"image": []`` or no ``"image"``. Image paths are relative to the conversations file.

Each scene gives a ``text_to_image`` item and two items of other :data:`KINDS`, its images all at one of a few
aspect ratios; which kinds, shape, captions and questions are a pure function of ``(seed, index)``, so ids
(``<scene key>-<kind>``) are stable. ``attributes.json`` beside the conversations file holds each scene's labels
(:mod:`polymodal.data.synth.labels`, of the scene as rendered at its aspect ratio) by scene key.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from polymodal.colourmaps import depth_to_rgb, semseg_to_rgb
from polymodal.data.multimodal.imagefolder import ATTRIBUTES_FILE
from polymodal.data.synth.bad_items import Entry, spoil
from polymodal.data.synth.labels import sample_labels
from polymodal.data.synth.render import MAX_SIZE, MIN_SIZE, render_scene
from polymodal.data.synth.scene import NUMBER_WORDS, SHAPES
from polymodal.data.synth.writers import (
    CHUNK,
    attributes_bytes,
    check_counts,
    chunk_ranges,
    png_bytes,
    run_chunks,
    sample_key,
    write_bytes,
)

IMAGE = "<|image|>"
KINDS = ("text_to_image", "image_to_caption", "depth_to_rgb", "semseg_to_rgb", "multi_turn", "text_only")
OTHER_KINDS_PER_SCENE = 2
SIDE_MULTIPLE = 16
# (height, width) as fractions of the longer side; square is listed twice so that it is the most common shape.
_ASPECTS = ((1.0, 1.0), (1.0, 1.0), (0.75, 1.0), (1.0, 0.75), (0.5, 1.0), (1.0, 0.5))
_STREAM = 0x636F6E76  # "conv": keeps these draws apart from the scenes' own (seed, index, attempt) ones
_ITEMS, _BAD = 0, 1  # separate draws, so that bad_fraction leaves the good items as they are
_IMAGES = {
    "rgb": lambda sample: sample["rgb"].permute(1, 2, 0).numpy(),
    "depth": lambda sample: depth_to_rgb(sample["depth"]),
    "semseg": lambda sample: semseg_to_rgb(sample["semseg"]),
}


def _rng(seed: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, index, _STREAM, purpose])


def _side(fraction: float, size: int) -> int:
    return max(SIDE_MULTIPLE, int(fraction * size) // SIDE_MULTIPLE * SIDE_MULTIPLE)


def _how_many(count: int, noun: str) -> str:
    if count == 1:
        return f"There is one {noun}."
    return f"There are {NUMBER_WORDS[count] if count else 'no'} {noun}s."


def _follow_up(names: list[str], rng: np.random.Generator) -> tuple[str, str]:
    """A question about the objects in the image and its answer: how many there are in all, or of one shape."""
    if rng.random() < 0.5:
        return "How many objects are in the image?", _how_many(len(names), "object")
    shape = str(rng.choice(SHAPES))
    return f"How many {shape}s are in the image?", _how_many(names.count(shape), shape)


def _turn_values(kind: str, sample: dict, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """The values of the turns (human first) of a ``kind`` item about ``sample``, and its image modalities in
    placeholder order."""
    height, width = sample["rgb"].shape[1:]
    caption = str(rng.choice(sample["caption"]))
    names = [SHAPES[label - 1] for label in sample["det"]["labels"].tolist()]
    generate = f"Generate an image of {width}x{height} according to the following prompt:\n{caption}"
    if kind == "text_to_image":
        return [generate, IMAGE], ["rgb"]
    if kind == "image_to_caption":
        return [f"{IMAGE}\nDescribe this image.", caption], ["rgb"]
    if kind == "depth_to_rgb":
        return [f"Generate an image of {width}x{height} from this depth map:\n{IMAGE}", IMAGE], ["depth", "rgb"]
    if kind == "semseg_to_rgb":
        prompt = f"Here is a segmentation map {IMAGE} of a scene. Generate an image of {width}x{height} to match it."
        return [prompt, IMAGE], ["semseg", "rgb"]
    if kind == "multi_turn":
        question, answer = _follow_up(names, rng)
        return [generate, IMAGE, question, answer, "Now show its segmentation map.", IMAGE], ["rgb", "semseg"]
    # text_only: the caption alone answers it
    return [f"How many objects does this describe: {caption}?", _how_many(len(names), "object")], []


def _image_path(key: str, modality: str) -> str:
    return f"images/{key}.{modality}.png"


def _scene_items(key: str, sample: dict, rng: np.random.Generator) -> list[dict]:
    """The good items of one rendered scene: ``text_to_image`` and ``OTHER_KINDS_PER_SCENE`` other kinds."""
    others = sorted(rng.choice(len(KINDS) - 1, OTHER_KINDS_PER_SCENE, replace=False))
    items = []
    for kind in (KINDS[0], *(KINDS[1 + i] for i in others)):
        values, modalities = _turn_values(kind, sample, rng)
        turns = [{"from": ("human", "gpt")[i % 2], "value": value} for i, value in enumerate(values)]
        item = {"id": f"{key}-{kind}", "conversations": turns}
        if modalities or rng.random() < 0.5:  # a text-only item has "image": [] or no "image" at all
            item["image"] = [_image_path(key, modality) for modality in modalities]
        items.append(item)
    return items


def _write_chunk(
    root: Path, seed: int, size: int, bad_fraction: float, jsonl: bool, indices: range
) -> tuple[list[Entry], dict[str, dict[str, int]]]:
    """Writes the chunk's images; returns its items and the labels of its scenes by key."""
    entries, labels = [], {}
    for index in indices:
        rng, bad_rng, key = _rng(seed, index, _ITEMS), _rng(seed, index, _BAD), sample_key(index)
        height, width = _ASPECTS[rng.integers(len(_ASPECTS))]
        sample = render_scene(seed, index, (_side(height, size), _side(width, size)))
        labels[key] = sample_labels(sample)
        items = _scene_items(key, sample, rng)
        used = {path for item in items for path in item.get("image", [])}
        modalities = [m for m in _IMAGES if _image_path(key, m) in used]
        files = {_image_path(key, m): png_bytes(_IMAGES[m](sample)) for m in modalities}
        for item in items:
            if bad_rng.random() < bad_fraction:
                entry, written = spoil(item, files, jsonl, bad_rng)
                files.update(written)
            else:
                entry = Entry(item)
            entries.append(entry)
        for path, data in files.items():
            write_bytes(root / path, data)
    return entries, labels


def write_conversations(
    root: str | Path,
    num_samples: int,
    seed: int = 0,
    size: int = 64,
    workers: int = 1,
    bad_fraction: float = 0.0,
    jsonl: bool = False,
) -> Path:
    """``root/conversations.json`` (a JSON list; ``conversations.jsonl`` with one item a line if ``jsonl``) of
    ``num_samples`` scenes' items, and their images under ``root/images/``; returns the conversations file.

    ``size`` (a multiple of 16) is the longer side of every image. About ``bad_fraction`` of the items are made bad
    (:mod:`polymodal.data.synth.bad_items`) and listed in ``root/bad_items.json``; with none, there is no such file.
    ``root/attributes.json`` holds the scene labels by scene key (see
    :func:`~polymodal.data.synth.writers.attributes_bytes`).
    """
    check_counts(num_samples, workers)
    if not (isinstance(size, int) and size % SIDE_MULTIPLE == 0 and MIN_SIZE <= size <= MAX_SIZE):
        raise ValueError(f"size must be a multiple of {SIDE_MULTIPLE} in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    if not 0.0 <= bad_fraction < 1.0:
        raise ValueError(f"bad_fraction must be in [0, 1), got {bad_fraction}")
    root = Path(root)
    job = partial(_write_chunk, root, seed, size, bad_fraction, jsonl)
    chunks = run_chunks(job, chunk_ranges(num_samples, CHUNK), workers, "writing conversations")
    entries = [entry for chunk_entries, _ in chunks for entry in chunk_entries]
    labels = {key: scene for _, chunk_labels in chunks for key, scene in chunk_labels.items()}
    write_bytes(root / ATTRIBUTES_FILE, attributes_bytes(labels))
    if jsonl:
        out, data = root / "conversations.jsonl", b"".join(entry.jsonl_line() for entry in entries)
    else:
        out, data = root / "conversations.json", json.dumps([entry.value for entry in entries], indent=1).encode()
    write_bytes(out, data)
    report = root / "bad_items.json"
    if bad_fraction > 0:
        bad = {entry.report_key(i): entry.reason for i, entry in enumerate(entries) if entry.reason is not None}
        write_bytes(report, json.dumps(bad, indent=1).encode())
    else:
        report.unlink(missing_ok=True)  # a report left by an earlier run would describe other items
    return out
