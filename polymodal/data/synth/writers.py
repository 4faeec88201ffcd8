"""Output layouts of a generated data set: 4M-style modality shards, an ImageFolder tree, Lumina conversations.

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

from polymodal.colourmaps import depth_to_rgb, normal_to_rgb, semseg_to_rgb
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import CLASS_NAMES, SHAPES
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
    "label": "label.txt",
}
_CHUNK = 64  # samples per worker task for the per-sample layouts


def sample_key(index: int) -> str:
    return f"{index:08d}"


def _png(array: np.ndarray) -> bytes:
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
        "rgb": _png(sample["rgb"].permute(1, 2, 0).numpy()),
        "depth": depth.getvalue(),
        "normal": _png(normal_to_rgb(sample["normal"])),
        "semseg": _png(sample["semseg"].numpy().astype(np.uint8)),
        "edges": _png(sample["edges"][0].numpy()),
        "det": json.dumps(det).encode(),
        "caption": json.dumps(sample["caption"]).encode(),
        "label": str(int(sample["label"])).encode(),
    }


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _write_shard(
    root: Path, seed: int, size: int, modalities: tuple[str, ...], samples_per_shard: int, indices: range
) -> int:
    encoded = [(sample_key(i), encode_sample(render_scene(seed, i, size))) for i in indices]
    shard = f"shard-{indices.start // samples_per_shard:05d}.tar"
    for modality in modalities:
        with atomic_output(root / modality / shard) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in encoded:
                info = tarfile.TarInfo(f"{key}.{MODALITY_EXTENSIONS[modality]}")
                info.size = len(members[modality])
                tar.addfile(info, io.BytesIO(members[modality]))
    return len(indices)


def _split_of(index: int, num_samples: int, val_fraction: float) -> str:
    return "val" if index >= num_samples - round(num_samples * val_fraction) else "train"


def _write_imagefolder_chunk(
    root: Path, seed: int, size: int, num_samples: int, val_fraction: float, indices: range
) -> int:
    for index in indices:
        sample = render_scene(seed, index, size)
        class_dir = root / _split_of(index, num_samples, val_fraction) / CLASS_NAMES[int(sample["label"])]
        _write_bytes(class_dir / f"{sample_key(index)}.png", encode_sample(sample)["rgb"])
    return len(indices)


def conversation_records(key: str, caption: str, image_dir: str) -> list[dict]:
    """One record per task kind; image paths are relative to the directory of ``conversations.json``."""
    rgb, depth, semseg = (f"{image_dir}/{key}.{name}.png" for name in ("rgb", "depth", "semseg"))

    def record(task: str, question: str, answer: str, images: list[str]) -> dict:
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return {"id": f"{key}-{task}", "conversations": turns, "image": images}

    return [
        record("text_to_image", f"Generate an image of {caption}.", "<|image|>", [rgb]),
        record("image_to_caption", "<|image|>Describe this image.", caption, [rgb]),
        record("depth_to_rgb", "Convert this depth map <|image|> to a photo.", "<|image|>", [depth, rgb]),
        record("semseg_to_rgb", "Render a photo from this segmentation map <|image|>.", "<|image|>", [semseg, rgb]),
    ]


def _write_conversation_chunk(root: Path, seed: int, size: int, indices: range) -> list[dict]:
    records = []
    for index in indices:
        sample = render_scene(seed, index, size)
        key = sample_key(index)
        images = {
            "rgb": sample["rgb"].permute(1, 2, 0).numpy(),
            "depth": depth_to_rgb(sample["depth"]),
            "semseg": semseg_to_rgb(sample["semseg"]),
        }
        for name, array in images.items():
            _write_bytes(root / "images" / f"{key}.{name}.png", _png(array))
        caption = sample["caption"][index % len(sample["caption"])]
        records.extend(conversation_records(key, caption, "images"))
    return records


def _chunks(num_samples: int, chunk_size: int) -> list[range]:
    return [range(start, min(start + chunk_size, num_samples)) for start in range(0, num_samples, chunk_size)]


def _run_chunks(job: Callable[[range], object], chunks: list[range], workers: int, description: str) -> list:
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


def _check_counts(num_samples: int, workers: int) -> None:
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
    """4M layout ``root/<modality>/shard-NNNNN.tar``; every shard but the last holds ``samples_per_shard`` samples."""
    _check_counts(num_samples, workers)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    unknown = set(modalities) - set(MODALITY_EXTENSIONS)
    if unknown or not modalities:
        raise ValueError(f"unknown or no modalities {sorted(unknown)}; choose from {list(MODALITY_EXTENSIONS)}")
    chunks = _chunks(num_samples, samples_per_shard)
    job = partial(_write_shard, Path(root), seed, size, tuple(modalities), samples_per_shard)
    _run_chunks(job, chunks, workers, "writing shards")
    return [Path(root) / m / f"shard-{shard:05d}.tar" for m in modalities for shard in range(len(chunks))]


def write_imagefolder(
    root: str | Path, num_samples: int, val_fraction: float = 0.1, seed: int = 0, size: int = 64, workers: int = 1
) -> None:
    """``root/{train,val}/<class name>/<key>.png``; the last ``val_fraction`` of the indices form ``val``.

    ``root/classes.json`` lists the class names in label order (folder names sort differently).
    """
    _check_counts(num_samples, workers)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    job = partial(_write_imagefolder_chunk, Path(root), seed, size, num_samples, val_fraction)
    _run_chunks(job, _chunks(num_samples, _CHUNK), workers, "writing image folders")
    _write_bytes(Path(root) / "classes.json", json.dumps(list(CLASS_NAMES)).encode())


def write_conversations(root: str | Path, num_samples: int, seed: int = 0, size: int = 64, workers: int = 1) -> Path:
    """``root/conversations.json`` (Lumina-mGPT records, one per task kind and sample) and ``root/images/*.png``."""
    _check_counts(num_samples, workers)
    job = partial(_write_conversation_chunk, Path(root), seed, size)
    records = [
        r for chunk in _run_chunks(job, _chunks(num_samples, _CHUNK), workers, "writing conversations") for r in chunk
    ]
    out = Path(root) / "conversations.json"
    _write_bytes(out, json.dumps(records, indent=1).encode())
    return out
