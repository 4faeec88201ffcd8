"""``polymodal lumina pretokenize``: one rank's share of a conversation file → token shards, its record, its errors.

Partition. Item ``i`` of the input (its 0-based position) belongs to rank ``i mod splits``; a rank's items form
chunks of ``chunk_size`` in input order, and chunk ``c`` becomes the shard
``shards/RRRRR-of-SSSSS/chunk-CCCCCC.safetensors`` once every item of it is encoded or rejected.

Per chunk, before any pixel is decoded: the item is checked (:func:`~.conversations.check_item`), its text
tokenized, each image's header read (missing, unreadable, too large or too small images rejected) and snapped to
its resolution bucket, and the whole sequence's length computed — longer than ``max_tokens`` is rejected, never
truncated. Then the images are decoded (in ``workers`` processes), EXIF-rotated, resized and cropped with an offset
drawn from ``(seed, item, image)``, and encoded by the image tokenizer in batches of one bucket shape.

Resuming. A shard that exists is a finished chunk (written atomically): a rerun skips it and redoes the rest,
with the same batches, so a rank killed at any moment and run again ends with the bytes of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal.families.lumina.conversations import (
    Conversation,
    RawItem,
    Rejected,
    Segment,
    assemble,
    check_item,
    item_id,
    plain_text_tokenizer,
    plan_segments,
    read_items,
    sequence_length,
)
from polymodal.families.lumina.images import (
    closest_bucket,
    crop_rng,
    fit_to_bucket,
    open_image,
    read_image_size,
    resolution_buckets,
)
from polymodal.families.lumina.records import (
    FORMAT,
    MANIFEST,
    RankRecord,
    file_sha256,
    rank_name,
    shard_path,
    write_or_check_manifest,
)
from polymodal.families.lumina.shards import ItemError, MappedShard, TokenSequence, write_shard
from polymodal.families.lumina.vocabulary import VocabularyLayout, image_block, image_block_length
from polymodal.files import exclusive_lock
from polymodal.progress import progress
from polymodal.tokenizers.carried import TEXT, TOKENIZERS_DIR, copy_tokenizers, export_fingerprint
from polymodal.tokenizers.image.tokenizer import ImageTokenizer
from polymodal.tokenizers.loading import load_image_tokenizer
from polymodal.tokenizers.text.bpe import load_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)

IMAGE = "image"


@dataclass(frozen=True)
class Settings:
    """Everything the tokens depend on (recorded in the manifest) and how this rank runs (not recorded)."""

    in_filename: Path
    out_dir: Path
    splits: int
    rank: int
    target_size: int
    text_tokenizer: Path
    image_tokenizer: Path
    text_vocab_size: int | None = None
    patch_size: int | None = None
    max_tokens: int = 4096
    max_pixels: int = 64 * 1024 * 1024
    min_image_side: int = 8
    seed: int = 0
    chunk_size: int = 256
    batch_size: int = 32
    workers: int = 1
    device: str = "cpu"

    def check(self) -> None:
        if self.splits < 1 or not 0 <= self.rank < self.splits:
            raise ValueError(f"need 0 <= --rank < --splits, got rank {self.rank} of {self.splits}")
        for name in ("target_size", "max_tokens", "max_pixels", "chunk_size", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.in_filename.is_file():
            raise FileNotFoundError(f"--in_filename {self.in_filename} does not exist")


@dataclass(frozen=True)
class _Planned:
    """An item that passed every check that needs no pixels."""

    conversation: Conversation
    segments: list[Segment]
    buckets: list[tuple[int, int]]


class _Encoder:
    """The tokenizers and settings of a run, and the work on one chunk."""

    def __init__(self, settings: Settings, text_tokenizer: Any, image_tokenizer: ImageTokenizer) -> None:
        self.settings = settings
        self.text = plain_text_tokenizer(text_tokenizer)
        self.image = image_tokenizer
        self.device = torch.device(settings.device)
        self.downsample = image_tokenizer.downsample
        self.patch_size = settings.patch_size or 2 * self.downsample
        if self.patch_size % self.downsample:
            raise ValueError(f"--patch_size {self.patch_size} is not a multiple of the tokenizer's {self.downsample}")
        self.buckets = resolution_buckets(settings.target_size, self.patch_size)
        text_vocab = settings.text_vocab_size or text_tokenizer.get_vocab_size()
        self.layout = VocabularyLayout(text_vocab_size=text_vocab, codebook_size=image_tokenizer.codebook_size)
        self.layout.check_text_tokenizer(text_tokenizer, f"text tokenizer {settings.text_tokenizer}")
        self.base_dir = settings.in_filename.parent

    def chunk(self, raws: list[RawItem], pool: Executor | None) -> tuple[list[TokenSequence], list[ItemError]]:
        errors: list[ItemError] = []
        planned = []
        for raw in raws:
            try:
                planned.append(self._plan(check_item(raw, self.base_dir)))
            except Rejected as rejected:
                errors.append(ItemError(raw.index, item_id(raw), rejected.reason, rejected.detail))
        images = self._decode(planned, pool, errors)
        codes = self._encode(images)
        sequences = []
        for item in planned:
            conversation = item.conversation
            keys = [(conversation.index, k) for k in range(len(conversation.images))]
            if all(key in codes for key in keys):
                blocks = [image_block(codes[key], self.layout) for key in keys]
                tokens, labels = assemble(item.segments, blocks, self.layout)
                sequences.append(TokenSequence(conversation.index, tokens, labels))
        errors.sort(key=lambda e: e.index)
        return sequences, errors

    def _plan(self, conversation: Conversation) -> _Planned:
        buckets = []
        for path in conversation.images:
            height, width = read_image_size(path, self.settings.max_pixels, self.settings.min_image_side)
            buckets.append(closest_bucket(height, width, self.buckets))
        segments = plan_segments(conversation, self.text)
        blocks = [image_block_length(h // self.downsample, w // self.downsample) for h, w in buckets]
        length = sequence_length(segments, blocks)
        if length > self.settings.max_tokens:
            raise Rejected("too_long", f"{length} tokens, more than --max_tokens {self.settings.max_tokens}")
        return _Planned(conversation, segments, buckets)

    def _decode(
        self, planned: list[_Planned], pool: Executor | None, errors: list[ItemError]
    ) -> dict[tuple[int, int], np.ndarray]:
        """Bucket-sized pixels of every image, by (item, image); an item with an image that fails is dropped."""
        jobs = [
            (str(path), bucket, self.settings.seed, item.conversation.index, k, self.settings.max_pixels,
             self.settings.min_image_side)
            for item in planned
            for k, (path, bucket) in enumerate(zip(item.conversation.images, item.buckets, strict=True))
        ]  # fmt: skip
        results = pool.map(_prepare_pixels, jobs, chunksize=8) if pool else map(_prepare_pixels, jobs)
        images, failed = {}, {}
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, Rejected):
                failed.setdefault(job[3], result)
            else:
                images[job[3], job[4]] = result
        for item in planned:
            rejected = failed.get(item.conversation.index)
            if rejected is not None:
                errors.append(item.conversation.error(rejected))
        return {key: pixels for key, pixels in images.items() if key[0] not in failed}

    def _encode(self, images: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
        """Codes of every image, encoded in batches of one shape (keys sorted, so a rerun batches alike)."""
        by_shape = defaultdict(list)
        for key in sorted(images):
            by_shape[images[key].shape].append(key)
        codes = {}
        for shape in sorted(by_shape):
            keys = by_shape[shape]
            for start in range(0, len(keys), self.settings.batch_size):
                batch = keys[start : start + self.settings.batch_size]
                pixels = torch.from_numpy(np.stack([images[k] for k in batch])).permute(0, 3, 1, 2)
                encoded = self.image.encode(pixels.to(self.device, torch.float32) / 255.0).cpu().numpy()
                codes.update(zip(batch, encoded, strict=True))
        return codes


def _prepare_pixels(job: tuple) -> np.ndarray | Rejected:
    """Open, orient, resize and crop one image to its bucket: uint8 [H, W, 3] (runs in a worker process)."""
    path, bucket, seed, item_index, image_index, max_pixels, min_side = job
    try:
        image = open_image(path, max_pixels, min_side)
    except Rejected as rejected:
        return rejected
    return np.asarray(fit_to_bucket(image, bucket, crop_rng(seed, item_index, image_index)))


def _chunks(raws: Iterable[RawItem], rank: int, splits: int, chunk_size: int) -> Iterator[list[RawItem]]:
    mine = (raw for raw in raws if raw.index % splits == rank)
    while chunk := list(islice(mine, chunk_size)):
        yield chunk


def _manifest(settings: Settings, encoder: _Encoder, fingerprints: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "input": {"name": settings.in_filename.name, "sha256": file_sha256(settings.in_filename)},
        "layout": encoder.layout.to_dict(),
        "tokenizers": {
            TEXT: {"sha256": fingerprints[TEXT], "path": f"{TOKENIZERS_DIR}/{TEXT}.json"},
            IMAGE: {"sha256": fingerprints[IMAGE], "path": f"{TOKENIZERS_DIR}/{IMAGE}"},
        },
        "target_size": settings.target_size,
        "patch_size": encoder.patch_size,
        "buckets": [list(b) for b in encoder.buckets],
        "max_tokens": settings.max_tokens,
        "max_pixels": settings.max_pixels,
        "min_image_side": settings.min_image_side,
        "seed": settings.seed,
        "splits": settings.splits,
        "chunk_size": settings.chunk_size,
    }


def _image_tokenizer_export(source: Path, staging: Path) -> Path:
    """The image tokenizer at ``source`` (run, checkpoint or export) as an export under ``staging``."""
    from polymodal.checkpoint.weights import export_weights, load_trained_model

    model, config_yaml = load_trained_model(source)
    if not isinstance(model, ImageTokenizer) or model.modality != "rgb":
        raise ValueError(f"--image_tokenizer {source} is not an rgb image tokenizer")
    export_weights(model, staging / IMAGE, config_yaml)
    return staging / IMAGE


def prepare_out_dir(settings: Settings) -> tuple[_Encoder, str]:
    """Load the tokenizers, then write the manifest and the tokenizer copies into ``out_dir`` — or check that the
    ones there match (every rank does this; the first one writes)."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="polymodal-lumina-") as staging:
        export = _image_tokenizer_export(settings.image_tokenizer, Path(staging))
        text_tokenizer = load_tokenizer(settings.text_tokenizer)
        encoder = _Encoder(settings, text_tokenizer, load_image_tokenizer(export).to(settings.device))
        fingerprints = {TEXT: tokenizer_fingerprint(text_tokenizer), IMAGE: export_fingerprint(export)}
        manifest = _manifest(settings, encoder, fingerprints)
        with exclusive_lock(settings.out_dir / MANIFEST):
            if not (settings.out_dir / MANIFEST).is_file():
                copy_tokenizers({TEXT: settings.text_tokenizer}, settings.out_dir / TOKENIZERS_DIR)
                shutil.rmtree(settings.out_dir / TOKENIZERS_DIR / IMAGE, ignore_errors=True)
                shutil.move(export, settings.out_dir / TOKENIZERS_DIR / IMAGE)
            return encoder, write_or_check_manifest(settings.out_dir, manifest)


def _finished_shard(path: Path, manifest_hash: str) -> MappedShard | None:
    if not path.is_file():
        return None
    try:
        shard = MappedShard(path)
    except ValueError as error:
        log.warning("redoing %s: %s", path, error)
        return None
    return shard if shard.metadata.get("manifest_sha256") == manifest_hash else None


def pretokenize_rank(settings: Settings) -> RankRecord:
    """Encode this rank's chunks that are not done yet; return its record (also saved in ``out_dir``)."""
    settings.check()
    encoder, manifest_hash = prepare_out_dir(settings)
    record = RankRecord(settings.out_dir, settings.rank, settings.splits, manifest_hash)
    _remove_stale_temporaries(settings)
    total = sum(1 for raw in read_items(settings.in_filename) if raw.index % settings.splits == settings.rank)
    with ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(settings.workers)) if settings.workers > 1 else None
        advance = stack.enter_context(progress(f"rank {settings.rank}: pre-tokenizing", total=total))
        raws = read_items(settings.in_filename)
        for chunk, chunk_items in enumerate(_chunks(raws, settings.rank, settings.splits, settings.chunk_size)):
            path = shard_path(settings.out_dir, settings.rank, settings.splits, chunk)
            shard = _finished_shard(path, manifest_hash)
            if shard is None:
                sequences, errors = encoder.chunk(chunk_items, pool)
                metadata = {"manifest_sha256": manifest_hash, "rank": str(settings.rank), "chunk": str(chunk)}
                write_shard(path, sequences, errors, encoder.layout.token_dtype, metadata)
                shard = MappedShard(path)
            record.add(chunk, shard)
            record.save(complete=False)
            advance(len(chunk_items))
    record.save(complete=True)
    return record


def _remove_stale_temporaries(settings: Settings) -> None:
    """Temporary files a killed run of this rank left behind (the atomic writes' ``.<name>.<pid>.<id>.tmp``)."""
    name = rank_name(settings.rank, settings.splits)
    stale = [*settings.out_dir.glob(f".{name}-*.tmp"), *(settings.out_dir / "shards" / name).glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)


def pretokenize_main(args: argparse.Namespace) -> int:
    from polymodal.config import ConfigError

    settings = Settings(**{name: getattr(args, name) for name in Settings.__dataclass_fields__})
    try:
        record = pretokenize_rank(settings)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    print(summary(record))
    return 0


def summary(record: RankRecord) -> str:
    """``rank 0 of 2: 120 items, 35,012 tokens in 1 shard; 3 left out (too_long 2, role_order 1) -> <errors>``."""
    shards = list(record.shards.values())
    errors = [e for chunk in record.errors.values() for e in chunk]
    counts: dict[str, int] = defaultdict(int)
    for error in errors:
        counts[error.reason] += 1
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
    return (
        f"rank {record.rank} of {record.splits}: {sum(s['items'] for s in shards):,} items, "
        f"{sum(s['tokens'] for s in shards):,} tokens in {len(shards)} shards; {len(errors)} left out"
        + (f" ({reasons}) -> {record.errors_path}" if errors else "")
    )
