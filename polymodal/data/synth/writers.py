"""Output layouts of a generated data set: 4M-style modality shards and an ImageFolder tree (Lumina conversations:
:mod:`polymodal.data.synth.conversations`), and the chunked, parallel, atomic writing they share.

Every layout carries the scene labels of :mod:`polymodal.data.synth.labels` (count, colour and shape): shards as
one modality each (``label``, ``colour_label``, ``shape_label``; a ``.txt`` member holding the class id), the other
layouts in an ``attributes.json`` beside their images (:func:`attributes_bytes`).

Each writer renders a chunk of sample indices in a worker process and returns what it wrote; files appear
atomically (temporary name, then rename), so an interrupted run never leaves a truncated tar or PNG behind.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.colourmaps import normal_to_rgb
from polymodal.data.multimodal.imagefolder import ATTRIBUTES_FILE, CLASSES_FILE
from polymodal.data.synth.labels import (
    ATTRIBUTE_CLASSES,
    DEFAULT_ATTRIBUTE,
    LABEL_MODALITIES,
    check_attribute,
    sample_labels,
)
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.twins import render_scene_with_twin
from polymodal.files import atomic_output
from polymodal.progress import progress

MODALITY_EXTENSIONS = {
    "rgb": "rgb.png",
    "depth": "depth.npy",
    "normal": "normal.png",
    "semseg": "semseg.png",
    "edges": "edges.png",
    "det": "det.json",
    "caption": "caption.json",
    **{modality: f"{modality}.txt" for modality in LABEL_MODALITIES.values()},
}
TWIN_MODALITY_EXTENSIONS = {"twin_rgb": "twin_rgb.png", "twin_caption": "twin_caption.json"}  # on request only
SHARD_EXTENSIONS = {**MODALITY_EXTENSIONS, **TWIN_MODALITY_EXTENSIONS}
CHUNK = 64  # samples per worker task for the per-sample layouts


def sample_key(index: int) -> str:
    return f"{index:08d}"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_sample(sample: dict) -> dict[str, bytes]:
    """Contract on-disk bytes of every modality, by modality name."""
    depth = io.BytesIO()
    np.save(depth, sample["depth"][0].numpy().astype(np.float32), allow_pickle=False)
    labels = sample["det"]["labels"].tolist()
    det = {"boxes": sample["det"]["boxes"].tolist(), "labels": labels, "names": [SHAPES[i - 1] for i in labels]}
    return {
        "rgb": png_bytes(sample["rgb"].permute(1, 2, 0).numpy()),
        "depth": depth.getvalue(),
        "normal": png_bytes(normal_to_rgb(sample["normal"])),
        "semseg": png_bytes(sample["semseg"].numpy().astype(np.uint8)),
        "edges": png_bytes(sample["edges"][0].numpy()),
        "det": json.dumps(det).encode(),
        "caption": json.dumps(sample["caption"]).encode(),
        **{modality: str(int(sample[modality])).encode() for modality in LABEL_MODALITIES.values()},
        **_encoded_twin(sample),
    }


def _encoded_twin(sample: dict) -> dict[str, bytes]:
    if "twin_rgb" not in sample:
        return {}
    return {
        "twin_rgb": png_bytes(sample["twin_rgb"].permute(1, 2, 0).numpy()),
        "twin_caption": json.dumps(sample["twin_caption"]).encode(),
    }


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def attributes_bytes(labels: dict[str, dict[str, int]]) -> bytes:
    """An ``attributes.json`` (the format of :mod:`polymodal.data.multimodal.imagefolder`): every attribute's class
    names and, by sample key, the class id of each attribute (:func:`~polymodal.data.synth.labels.sample_labels`)."""
    classes = {attribute: list(names) for attribute, names in ATTRIBUTE_CLASSES.items()}
    return json.dumps({"classes": classes, "labels": labels}, indent=1).encode()


def _write_shard(
    root: Path, seed: int, size: int, modalities: tuple[str, ...], samples_per_shard: int, indices: range
) -> int:
    render = render_scene_with_twin if set(modalities) & set(TWIN_MODALITY_EXTENSIONS) else render_scene
    encoded = [(sample_key(i), encode_sample(render(seed, i, size))) for i in indices]
    shard = f"shard-{indices.start // samples_per_shard:05d}.tar"
    for modality in modalities:
        with atomic_output(root / modality / shard) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in encoded:
                info = tarfile.TarInfo(f"{key}.{SHARD_EXTENSIONS[modality]}")
                info.size = len(members[modality])
                tar.addfile(info, io.BytesIO(members[modality]))
    return len(indices)


def _split_of(index: int, num_samples: int, val_fraction: float) -> str:
    return "val" if index >= num_samples - round(num_samples * val_fraction) else "train"


def _write_imagefolder_chunk(
    root: Path, seed: int, size: int, num_samples: int, val_fraction: float, label: str, indices: range
) -> list[tuple[str, str, dict[str, int]]]:
    """Writes the chunk's images; returns (split, key, labels) of each."""
    written = []
    for index in indices:
        sample = render_scene(seed, index, size)
        labels, split, key = sample_labels(sample), _split_of(index, num_samples, val_fraction), sample_key(index)
        class_dir = root / split / ATTRIBUTE_CLASSES[label][labels[label]]
        write_bytes(class_dir / f"{key}.png", encode_sample(sample)["rgb"])
        written.append((split, key, labels))
    return written


def chunk_ranges(num_samples: int, chunk_size: int) -> list[range]:
    return [range(start, min(start + chunk_size, num_samples)) for start in range(0, num_samples, chunk_size)]


def run_chunks(job: Callable[[range], object], chunks: list[range], workers: int, description: str) -> list:
    """Run ``job`` on every chunk (in ``workers`` processes when > 1), reporting progress; results in chunk order."""
    results: list = [None] * len(chunks)
    with progress(description, total=sum(len(c) for c in chunks)) as advance:
        if workers <= 1:
            for i, chunk in enumerate(chunks):
                results[i] = job(chunk)
                advance(len(chunk))
            return results
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(job, chunk): i for i, chunk in enumerate(chunks)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                advance(len(chunks[futures[future]]))
    return results


def check_counts(num_samples: int, workers: int) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")


def write_shards(
    root: str | Path,
    num_samples: int,
    samples_per_shard: int,
    seed: int = 0,
    size: int = 64,
    workers: int = 1,
    modalities: tuple[str, ...] = tuple(MODALITY_EXTENSIONS),
) -> list[Path]:
    """4M layout ``root/<modality>/shard-NNNNN.tar``; every shard but the last holds ``samples_per_shard`` samples.

    ``modalities`` may also name the shape twins' ``twin_rgb`` and ``twin_caption``
    (:mod:`~polymodal.data.synth.twins`), which are rendered only when asked for.
    """
    check_counts(num_samples, workers)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    unknown = set(modalities) - set(SHARD_EXTENSIONS)
    if unknown or not modalities:
        raise ValueError(f"unknown or no modalities {sorted(unknown)}; choose from {list(SHARD_EXTENSIONS)}")
    chunks = chunk_ranges(num_samples, samples_per_shard)
    job = partial(_write_shard, Path(root), seed, size, tuple(modalities), samples_per_shard)
    run_chunks(job, chunks, workers, "writing shards")
    return [Path(root) / m / f"shard-{shard:05d}.tar" for m in modalities for shard in range(len(chunks))]


def write_imagefolder(
    root: str | Path,
    num_samples: int,
    val_fraction: float = 0.1,
    seed: int = 0,
    size: int = 64,
    workers: int = 1,
    label: str = DEFAULT_ATTRIBUTE,
) -> None:
    """``root/{train,val}/<class name>/<key>.png``, the class being the ``label`` attribute of the scene (``count``,
    ``colour`` or ``shape``); the last ``val_fraction`` of the indices form ``val``.

    ``root/classes.json`` lists the attribute's class names in label order (folder names sort differently), and
    ``root/<split>/attributes.json`` every attribute of each image of the split (:func:`attributes_bytes`).
    """
    check_counts(num_samples, workers)
    check_attribute(label)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root)
    job = partial(_write_imagefolder_chunk, root, seed, size, num_samples, val_fraction, label)
    by_split: dict[str, dict[str, dict[str, int]]] = {}
    for chunk in run_chunks(job, chunk_ranges(num_samples, CHUNK), workers, "writing image folders"):
        for split, key, labels in chunk:
            by_split.setdefault(split, {})[key] = labels
    for split, labels in by_split.items():
        write_bytes(root / split / ATTRIBUTES_FILE, attributes_bytes(labels))
    write_bytes(root / CLASSES_FILE, json.dumps(list(ATTRIBUTE_CLASSES[label])).encode())
