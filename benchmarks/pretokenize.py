"""Pre-tokenization, batched against one image at a time: 4M's crop encoding and Lumina-mGPT's whole pre-tokenizer.

4M (``--family 4m``): encoding crops in batches, as ``polymodal pretokenize-4m`` does, against one at a time.
Model: the rgb tokenizer of ``configs/tokenizers/rgb_tiny.yaml`` (64 px -> 8x8 codes, FSQ of 1000 codes),
built in-process and randomly initialised from a fixed seed. Encoding costs the same whatever the weights, so no
trained checkpoint is needed.

* (A) batched: :func:`polymodal.families.fourm.pretokenize.encode_crops` with ``--batch-size`` crops per forward pass,
  the function the pretokenizer calls (its default batch size unless told otherwise).
* (B) one at a time: ``tokenizer.encode(crop[None])`` for each crop, then concatenated.

Both run on CPU under ``torch.inference_mode()`` over the same ``--images`` crops: synthetic scenes rendered in
memory at the tokenizer's 64 px. After one untimed warm-up batch each, A and B alternate (A/B, B/A, ...) for
``--rounds`` rounds; the median and best images/s are reported, and their ratio batched / one-at-a-time.

Codes: both sides must give the same codes, and the script prints ``codes identical``. Batch 1 and batch N run
different convolution kernels whose latents differ by ~1e-6, so a latent whose two nearest codes are that close
can flip. For every differing code the script prints the assignment gap between the two codes (how much nearer
the latent is to one than to the other, in squared distance in the quantizer's assignment space); gaps below
``TIE_TOLERANCE`` are such float near-ties, a larger gap means the two sides really disagree.

End to end: :func:`pretokenize_4m` once over a synthetic rgb shard tree (``--samples`` scenes, 5 crops each) in
a temporary directory, in this process, including the shard index build: an absolute samples/s.

Lumina-mGPT (``--family lumina``): items/s of (A) ``polymodal lumina pretokenize`` as a function call,
:func:`pretokenize_rank` (``--lumina-workers`` decode processes, encoder batches of ``--lumina-batch-size``) followed
by :func:`concat_records`, against (B) :func:`upstream_pretokenize`, the per-item loop of upstream's pre-tokenizer
written out here: in this process, each item's text pieces tokenized one by one, each image opened, snapped to its
bucket, cropped (the same seeded offset as ours) and encoded alone, labels as the token id or -100, one pickle file
per item and a JSON record list. Both start from the files on disk and write their output to a fresh directory each
round, so every round pays a run's start-up as the tool does (loading the tokenizers; for ours also the manifest,
the tokenizer copies and the process pool); there is no warm-up round. Same input: a synthetic conversation corpus
(``--lumina-samples`` scenes, 3 items each, images at ``--target-size`` px), a BPE trained on its text and the
rgb_tiny tokenizer above exported like a trained one. The two alternate for ``--rounds`` rounds. Tokens: the last
round's outputs are compared item by item; text tokens and labels must be equal, and image codes that differ are
judged by their assignment gap as above (the encoder runs batches of up to ``--lumina-batch-size`` against 1).

    python benchmarks/pretokenize.py                 # both families, ~2 minutes on 2 CPU cores
    python benchmarks/pretokenize.py --threads 1     # on a busy box
    python benchmarks/pretokenize.py --family lumina --lumina-workers 2
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from timing import alternate, platform_line, rate_table

from polymodal.checkpoint.weights import export_weights
from polymodal.config import instantiate, load_config
from polymodal.data.synth.conversations import write_conversations
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.writers import write_shards
from polymodal.families.fourm.pretokenize import DEFAULT_BATCH_SIZE, CropOptions, encode_crops, pretokenize_4m
from polymodal.families.lumina.conversations import PLACEHOLDER, plain_text_tokenizer
from polymodal.families.lumina.images import (
    closest_bucket,
    crop_rng,
    fit_to_bucket,
    image_to_tensor,
    open_image,
    resolution_buckets,
)
from polymodal.families.lumina.pretokenize import Settings, pretokenize_rank
from polymodal.families.lumina.records import RecordSet, concat_records
from polymodal.families.lumina.vocabulary import VocabularyLayout, image_block, parse_image_block
from polymodal.tokenizers.image.tokenizer import ImageTokenizer
from polymodal.tokenizers.loading import load_image_tokenizer
from polymodal.tokenizers.text.bpe import load_tokenizer, save_tokenizer, train_bpe

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tokenizers" / "rgb_tiny.yaml"
SEED = 0
TIE_TOLERANCE = 1e-4  # assignment gap below which a differing code is a float near-tie


def build_tokenizer() -> tuple[ImageTokenizer, int]:
    """The rgb_tiny tokenizer (random weights from ``SEED``, eval mode) and its image size."""
    config = load_config(CONFIG)
    torch.manual_seed(SEED)
    tokenizer = instantiate(config.model).eval()
    return tokenizer, int(config.constants.image_size)


def render_crops(count: int, size: int) -> torch.Tensor:
    """``count`` synthetic rgb scenes at ``size`` px, float [count, 3, size, size] in [0, 1]."""
    return torch.stack([render_scene(SEED, index, size)["rgb"] for index in range(count)]).float() / 255.0


def encode_one_at_a_time(tokenizer: ImageTokenizer, crops: torch.Tensor) -> np.ndarray:
    """The baseline: the model called on each crop alone."""
    return torch.cat([tokenizer.encode(crop[None]).flatten(1) for crop in crops]).numpy()


def assignment_gaps(tokenizer: ImageTokenizer, crops: torch.Tensor, codes: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``| |p - q(code)|^2 - |p - q(other code)|^2 |`` at every position where the code maps ``(n, h·w)`` differ,
    with ``p`` the crop's latent in the quantizer's assignment space and ``q`` a code's latent: ~1e-6 is a float
    near-tie between two codes, not a disagreement."""
    quantizer = tokenizer.quantizer
    rows, positions = np.nonzero(codes != other)
    if rows.size == 0:
        return np.zeros(0)
    with torch.inference_mode():
        latents = tokenizer.encoder(tokenizer.normalization.normalize(crops[torch.from_numpy(rows)]))
        space = quantizer.assignment_space(latents).flatten(2)[torch.arange(rows.size), :, torch.from_numpy(positions)]

        def code_latents(chosen: np.ndarray) -> torch.Tensor:
            ids = torch.from_numpy(chosen[rows, positions].astype(np.int64)).view(-1, 1, 1)
            return quantizer.codes_to_latent(ids).flatten(1)

        first, second = code_latents(codes), code_latents(other)
        gaps = (space - first).square().sum(dim=1) - (space - second).square().sum(dim=1)
        return gaps.abs().numpy()


@dataclass
class EncodingResult:
    """Seconds per round of both sides (paired by round), how their codes compare, and the end-to-end rate."""

    images: int
    batch_size: int
    batched_s: list[float]
    one_at_a_time_s: list[float]
    total_codes: int
    differing_codes: int
    largest_gap: float  # largest assignment gap among differing codes, 0 when the codes are identical
    end_to_end_samples_per_s: float

    @property
    def codes_identical(self) -> bool:
        return self.differing_codes == 0

    @property
    def near_ties_only(self) -> bool:
        """Every differing code (if any) is a float near-tie."""
        return self.largest_gap < TIE_TOLERANCE

    def images_per_s(self, seconds: list[float]) -> list[float]:
        return [self.images / s for s in seconds]

    @property
    def median_ratio(self) -> float:
        batched, single = self.images_per_s(self.batched_s), self.images_per_s(self.one_at_a_time_s)
        return statistics.median(batched) / statistics.median(single)

    @property
    def best_ratio(self) -> float:
        return max(self.images_per_s(self.batched_s)) / max(self.images_per_s(self.one_at_a_time_s))


def timed(encode: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    with torch.inference_mode():
        started = time.perf_counter()
        codes = encode()
        return time.perf_counter() - started, codes


def measure_encoding(
    tokenizer: ImageTokenizer, crops: torch.Tensor, batch_size: int, rounds: int
) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """Alternate both sides ``rounds`` times (batched first in even rounds); their seconds and last codes."""

    def batched() -> np.ndarray:
        return encode_crops(tokenizer, crops, batch_size)

    def one_at_a_time() -> np.ndarray:
        return encode_one_at_a_time(tokenizer, crops)

    timed(lambda: encode_crops(tokenizer, crops[:batch_size], batch_size))
    timed(lambda: encode_one_at_a_time(tokenizer, crops[:batch_size]))
    rounds_run = alternate(lambda: timed(batched), lambda: timed(one_at_a_time), rounds)
    (_, batched_codes), (_, single_codes) = rounds_run[-1]
    batched_s = [batched_time for (batched_time, _), _ in rounds_run]
    single_s = [single_time for _, (single_time, _) in rounds_run]
    return batched_s, single_s, batched_codes, single_codes


def end_to_end_samples_per_s(
    tokenizer: ImageTokenizer, scratch: Path, samples: int, samples_per_shard: int, options: CropOptions, batch: int
) -> float:
    """Samples/s of one :func:`pretokenize_4m` run (in this process) over a fresh synthetic rgb shard tree."""
    source = scratch / "scenes"
    write_shards(source, samples, samples_per_shard, seed=SEED, size=options.image_size, modalities=("rgb",))
    started = time.perf_counter()
    report = pretokenize_4m(
        source, {"rgb": tokenizer}, scratch / "tokens", options, batch_size=batch, cache_dir=scratch / "cache"
    )
    seconds = time.perf_counter() - started
    if report.skipped_samples:
        raise RuntimeError(f"pretokenize_4m skipped {len(report.skipped_samples)} synthetic samples")
    return samples / seconds


def encoding_report(result: EncodingResult, image_size: int, grid: tuple[int, int]) -> str:
    batched = result.images_per_s(result.batched_s)
    single = result.images_per_s(result.one_at_a_time_s)
    return "\n".join(
        [
            f"encode: {result.images} crops of {image_size}x{image_size} -> {grid[0]}x{grid[1]} codes, "
            f"{len(batched)} rounds, batched {result.batch_size} per pass vs one at a time",
            *rate_table(
                "images", ("batched (A)", "one at a time (B)", "ratio batched/one-at-a-time"), batched, single, 30
            ),
            codes_line(result.differing_codes, result.total_codes, result.largest_gap, result.near_ties_only),
        ]
    )


# ---------------------------------------------------------------- Lumina-mGPT

TEXT_VOCAB = 1024  # the BPE's asked-for size: image codes start at this id
IGNORE = -100  # upstream's label of a token that is not trained


@dataclass(frozen=True)
class LuminaInputs:
    """A synthetic conversation corpus, a BPE trained on its text and an export of the rgb_tiny tokenizer."""

    conversations: Path
    text_tokenizer: Path
    image_tokenizer: Path
    target_size: int

    def settings(self, out_dir: Path, batch_size: int, workers: int) -> Settings:
        """The settings of one ``polymodal lumina pretokenize`` run over the whole corpus (one rank)."""
        return Settings(
            in_filename=self.conversations,
            out_dir=out_dir,
            splits=1,
            rank=0,
            target_size=self.target_size,
            text_tokenizer=self.text_tokenizer,
            image_tokenizer=self.image_tokenizer,
            text_vocab_size=TEXT_VOCAB,
            seed=SEED,
            batch_size=batch_size,
            workers=workers,
        )

    def items(self) -> list[dict[str, Any]]:
        return json.loads(self.conversations.read_text())


def export_tokenizer(directory: Path) -> Path:
    """:func:`build_tokenizer`'s model exported with its config into ``directory``, as a trained one would be."""
    tokenizer, _ = build_tokenizer()
    model = OmegaConf.to_container(load_config(CONFIG).model, resolve=True)
    export_weights(tokenizer, directory, OmegaConf.to_yaml(OmegaConf.create({"model": model})))
    return directory


def lumina_inputs(root: Path, samples: int, target_size: int, workers: int = 1) -> LuminaInputs:
    """Write the corpus of ``samples`` scenes (images ``target_size`` px on the longer side) under ``root``, train
    the BPE on its turns and export the image tokenizer."""
    conversations = write_conversations(root / "corpus", samples, seed=SEED, size=target_size, workers=workers)
    texts = [turn["value"] for item in json.loads(conversations.read_text()) for turn in item["conversations"]]
    text = save_tokenizer(train_bpe(texts, TEXT_VOCAB), root / "bpe.json")
    return LuminaInputs(conversations, text, export_tokenizer(root / "rgb_tokenizer"), target_size)


def build_record_set(inputs: LuminaInputs, out_dir: Path, batch_size: int, workers: int) -> Path:
    """(A): ``polymodal lumina pretokenize`` then ``concat-records`` into ``out_dir``; the ``record.json`` path."""
    pretokenize_rank(inputs.settings(out_dir, batch_size, workers))
    concat_records(out_dir, out_dir / "record.json")
    return out_dir / "record.json"


def save_upstream_item(files: Path, index: int, tokens: list[int], labels: list[int]) -> dict[str, Any]:
    """Upstream's form of one item, ``files/{index}.pkl`` holding ``{"token", "label", "id"}`` in the default pickle
    protocol; returns its entry of the record list."""
    path = files / f"{index}.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"token": tokens, "label": labels, "id": index}, handle)
    return {"file": str(path), "len": len(tokens), "id": index}


def save_upstream_records(path: Path, entries: list[dict[str, Any]]) -> Path:
    """Upstream's record list, ``[{"file", "len", "id"}, ...]`` as one JSON file."""
    path.write_text(json.dumps(entries))
    return path


def fitted_image(path: Path, item: int, number: int, buckets: list[tuple[int, int]]) -> Image.Image:
    """Image ``number`` of item ``item``, opened, snapped to its bucket and cropped at the pre-tokenizer's seeded
    offset: what the encoder sees on both sides."""
    image = open_image(path, Settings.max_pixels, Settings.min_image_side)
    return fit_to_bucket(image, closest_bucket(image.height, image.width, buckets), crop_rng(SEED, item, number))


def upstream_pretokenize(inputs: LuminaInputs, out_dir: Path) -> int:
    """(B), the baseline: upstream's per-item loop in this process, writing its one-pickle-per-item form to
    ``out_dir`` (``files/`` and ``record.json``). Returns the number of images encoded.

    Both tokenizers are loaded first. Then, for each item in input order and each turn: the text pieces around the
    ``<|image|>`` placeholders are tokenized one call each, every image is opened, snapped to its bucket, cropped
    and encoded alone into its block, and the turn ends with ``<|eot|>``. Labels are the token id in assistant
    turns and -100 elsewhere. The corpus has no bad items, so nothing is checked.
    """
    text = plain_text_tokenizer(load_tokenizer(inputs.text_tokenizer))  # specials' text as plain text, as ours
    image_tokenizer = load_image_tokenizer(inputs.image_tokenizer)
    layout = VocabularyLayout(TEXT_VOCAB, image_tokenizer.codebook_size)
    buckets = resolution_buckets(inputs.target_size, 2 * image_tokenizer.downsample)
    files = out_dir / "files"
    files.mkdir(parents=True)
    entries, images = [], 0
    for index, item in enumerate(inputs.items()):
        paths = [inputs.conversations.parent / path for path in item.get("image", [])]
        tokens, labels, number = [layout.bos], [IGNORE], 0
        for turn, message in enumerate(item["conversations"]):
            ids: list[int] = []
            for k, piece in enumerate(message["value"].split(PLACEHOLDER)):
                if k:
                    pixels = image_to_tensor([fitted_image(paths[number], index, number, buckets)])
                    number += 1
                    ids += image_block(image_tokenizer.encode(pixels)[0].numpy(), layout).tolist()
                if piece:
                    ids += text.encode(piece, add_special_tokens=False).ids
            ids.append(layout.end_of_turn)
            tokens += ids
            labels += ids if turn % 2 else [IGNORE] * len(ids)
        images += len(paths)
        entries.append(save_upstream_item(files, index, tokens, labels))
    save_upstream_records(out_dir / "record.json", entries)
    return images


@dataclass
class SequenceCheck:
    """How the last round's outputs of both sides compare, item by item."""

    items: int  # items in our record set
    disagreeing_items: int  # missing on one side, or different length, labels or non-code tokens
    total_codes: int
    differing_codes: int
    largest_gap: float  # largest assignment gap among differing codes, 0 when the codes are identical

    @property
    def tokens_identical(self) -> bool:
        return self.disagreeing_items == 0 and self.differing_codes == 0

    @property
    def near_ties_only(self) -> bool:
        """Only image codes differ, and each (if any) is a float near-tie."""
        return self.disagreeing_items == 0 and self.largest_gap < TIE_TOLERANCE


def read_upstream_item(entry: dict[str, Any]) -> dict[str, Any]:
    """One item of the upstream form, as its loader reads it (only files this benchmark wrote)."""
    with open(entry["file"], "rb") as handle:
        return pickle.load(handle)


def compare_sequences(inputs: LuminaInputs, record_path: Path, upstream_dir: Path) -> SequenceCheck:
    """Our record set against the upstream form of the same corpus: same items, equal lengths and labels, equal
    tokens except image codes; each image whose codes differ is re-cropped to measure the assignment gaps."""
    record_set = RecordSet(record_path)
    layout, buckets = record_set.layout, [tuple(bucket) for bucket in record_set.manifest["buckets"]]
    tokenizer = load_image_tokenizer(inputs.image_tokenizer)
    items = inputs.items()
    entries = {entry["id"]: entry for entry in json.loads((upstream_dir / "record.json").read_text())}
    ours = {int(index): i for i, index in enumerate(record_set.input_index)}
    check = SequenceCheck(len(record_set), len(set(entries) ^ set(ours)), 0, 0, 0.0)
    for index in sorted(set(entries) & set(ours)):
        tokens, trained = record_set.item(ours[index])
        upstream = read_upstream_item(entries[index])
        theirs, their_labels = np.array(upstream["token"]), np.array(upstream["label"])
        same_shape = len(theirs) == len(tokens) and np.array_equal(their_labels != IGNORE, trained)
        if not same_shape or not np.array_equal(their_labels[trained], theirs[trained]):
            check.disagreeing_items += 1
            continue
        differ = tokens != theirs
        if (differ & ~(layout.is_image_code(tokens) & layout.is_image_code(theirs))).any():
            check.disagreeing_items += 1
            continue
        starts, ends = np.flatnonzero(tokens == layout.begin_image), np.flatnonzero(tokens == layout.end_image)
        for number, (start, end) in enumerate(zip(starts, ends, strict=True)):
            codes = parse_image_block(tokens[start : end + 1], layout)
            other = parse_image_block(theirs[start : end + 1], layout)
            check.total_codes += codes.size
            if np.array_equal(codes, other):
                continue
            path = inputs.conversations.parent / items[index]["image"][number]
            pixels = image_to_tensor([fitted_image(path, index, number, buckets)])
            gaps = assignment_gaps(tokenizer, pixels, codes.reshape(1, -1), other.reshape(1, -1))
            check.differing_codes += gaps.size
            check.largest_gap = max(check.largest_gap, float(gaps.max()))
    return check


@dataclass
class LuminaResult:
    """Seconds per round of both sides (paired by round) and how their token sequences compare."""

    items: int
    images: int
    workers: int
    batch_size: int
    ours_s: list[float]
    upstream_s: list[float]
    check: SequenceCheck

    def items_per_s(self, seconds: list[float]) -> list[float]:
        return [self.items / s for s in seconds]


def measure_lumina(inputs: LuminaInputs, scratch: Path, batch_size: int, workers: int, rounds: int) -> LuminaResult:
    """Alternate both sides ``rounds`` times, each into a fresh directory; compare the last round's outputs."""
    outputs = {"ours": scratch / "ours", "upstream": scratch / "upstream"}
    images = 0

    def ours() -> float:
        shutil.rmtree(outputs["ours"], ignore_errors=True)
        started = time.perf_counter()
        build_record_set(inputs, outputs["ours"], batch_size, workers)
        return time.perf_counter() - started

    def upstream() -> float:
        nonlocal images
        shutil.rmtree(outputs["upstream"], ignore_errors=True)
        started = time.perf_counter()
        images = upstream_pretokenize(inputs, outputs["upstream"])
        return time.perf_counter() - started

    pairs = alternate(ours, upstream, rounds)
    check = compare_sequences(inputs, outputs["ours"] / "record.json", outputs["upstream"])
    items = len(inputs.items())
    return LuminaResult(items, images, workers, batch_size, [a for a, _ in pairs], [b for _, b in pairs], check)


def codes_line(differing: int, total: int, largest_gap: float, near_ties_only: bool) -> str:
    """``codes identical: True``, or how many differ, the largest assignment gap and the verdict."""
    if differing == 0:
        return "codes identical: True"
    verdict = "float near-ties only" if near_ties_only else "the two sides DISAGREE"
    return (
        f"codes identical: False ({differing} of {total} differ; largest assignment gap {largest_gap:.1e}, "
        f"tolerance {TIE_TOLERANCE:.0e}: {verdict})"
    )


def lumina_report(result: LuminaResult, target_size: int) -> str:
    check = result.check
    ours, upstream = result.items_per_s(result.ours_s), result.items_per_s(result.upstream_s)
    labels = ("pretokenize_rank (A)", "one at a time (B)", "ratio A/B")
    decode = f"{result.workers} decode processes" if result.workers > 1 else "decoding in-process"
    return "\n".join(
        [
            f"lumina: {result.items} items with {result.images} images ({target_size} px target), {len(ours)} rounds, "
            f"pretokenize_rank ({decode}, batch {result.batch_size}) + concat_records vs upstream's per-item loop "
            "(1 process, one image at a time, pickles)",
            *rate_table("items", labels, ours, upstream, 30),
            f"sequences: {check.items} items, {check.disagreeing_items} disagree in text, labels or length; "
            + codes_line(check.differing_codes, check.total_codes, check.largest_gap, check.near_ties_only),
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("4m", "lumina", "both"), default="both", help="which pre-tokenizers")
    parser.add_argument("--images", type=int, default=512, help="4M: crops encoded per side and round")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="4M: crops per forward pass of the batched side"
    )
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    parser.add_argument("--samples", type=int, default=400, help="4M: scenes in the end-to-end shard tree")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--lumina-samples", type=int, default=200, help="Lumina: scenes in the corpus (3 items each)")
    parser.add_argument("--lumina-workers", type=int, default=2, help="Lumina: pretokenize_rank's decode processes")
    parser.add_argument("--lumina-batch-size", type=int, default=32, help="Lumina: pretokenize_rank's encoder batch")
    parser.add_argument("--target-size", type=int, default=64, help="Lumina: bucket target size and image side (px)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads before measuring (default: torch's own choice); 1 on a busy box",
    )
    args = parser.parse_args(argv)
    positive = ("images", "batch_size", "rounds", "samples", "samples_per_shard", "lumina_samples", "lumina_workers")
    for name in (*positive, "lumina_batch_size", "target_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.target_size % 16:
        parser.error(f"--target-size must be a multiple of 16 (the corpus's image sides), got {args.target_size}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def run_fourm(args: argparse.Namespace) -> EncodingResult:
    """Both 4M sides and the end-to-end run; prints their report."""
    tokenizer, image_size = build_tokenizer()
    crops = render_crops(args.images, image_size)
    batched_s, single_s, batched_codes, single_codes = measure_encoding(tokenizer, crops, args.batch_size, args.rounds)
    gaps = assignment_gaps(tokenizer, crops, batched_codes, single_codes)
    options = CropOptions(image_size=image_size, seed=SEED)
    with tempfile.TemporaryDirectory(prefix="pretokenize-") as scratch:
        samples_per_s = end_to_end_samples_per_s(
            tokenizer, Path(scratch), args.samples, args.samples_per_shard, options, args.batch_size
        )
    result = EncodingResult(
        images=args.images,
        batch_size=args.batch_size,
        batched_s=batched_s,
        one_at_a_time_s=single_s,
        total_codes=batched_codes.size,
        differing_codes=int(gaps.size),
        largest_gap=float(gaps.max(initial=0.0)),
        end_to_end_samples_per_s=samples_per_s,
    )
    print(encoding_report(result, image_size, tokenizer.latent_grid(image_size)), flush=True)
    print(
        f"end to end: pretokenize_4m over {args.samples} samples x {options.n_crops} crops "
        f"({-(-args.samples // args.samples_per_shard)} shards, 1 process, batch {args.batch_size}): "
        f"{samples_per_s:.0f} samples/s ({samples_per_s * options.n_crops:.0f} crops/s)",
        flush=True,
    )
    return result


def run_lumina(args: argparse.Namespace) -> LuminaResult:
    """Both Lumina sides over a fresh corpus; prints their report."""
    with tempfile.TemporaryDirectory(prefix="pretokenize-lumina-") as scratch:
        inputs = lumina_inputs(Path(scratch) / "inputs", args.lumina_samples, args.target_size)
        result = measure_lumina(inputs, Path(scratch), args.lumina_batch_size, args.lumina_workers, args.rounds)
    print(lumina_report(result, args.target_size), flush=True)
    return result


@dataclass
class PretokenizeResults:
    """The measurements of the families that ran (None for one that did not)."""

    fourm: EncodingResult | None
    lumina: LuminaResult | None


def main(argv: Sequence[str] | None = None) -> PretokenizeResults:
    """Measure the chosen families, print the reports and return the measurements."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(platform_line(), flush=True)
    fourm = run_fourm(args) if args.family in ("4m", "both") else None
    lumina = run_lumina(args) if args.family in ("lumina", "both") else None
    return PretokenizeResults(fourm, lumina)


if __name__ == "__main__":
    main()
