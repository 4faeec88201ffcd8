"""Lumina-mGPT pre-tokenization: ``polymodal lumina pretokenize`` against upstream's per-item loop.

Items/s of (A) ``polymodal lumina pretokenize`` as a function call, :func:`pretokenize_rank` (``--workers`` decode
processes, encoder batches of ``--batch-size``) followed by :func:`concat_records`, against (B)
:func:`upstream_pretokenize`, the per-item loop of upstream's pre-tokenizer written out here: in this process, each
item's text pieces tokenized one by one, each image opened, snapped to its bucket, cropped (the same seeded offset as
ours) and encoded alone, labels as the token id or -100, one pickle file per item and a JSON record list. Both start
from the files on disk and write their output to a fresh directory each round, so every round pays a run's start-up
as the tool does (loading the tokenizers; for ours also the manifest, the tokenizer copies and the process pool);
there is no warm-up round. Same input: a synthetic conversation corpus (``--samples`` scenes, 3 items each, images at
``--target-size`` px), a BPE trained on its text and the rgb_tiny tokenizer of ``image_codes.py`` exported like a
trained one. The two alternate for ``--rounds`` rounds. Tokens: the last round's outputs are compared item by item;
text tokens and labels must be equal, and image codes that differ are judged by their assignment gap
(``image_codes.py``; the encoder runs batches of up to ``--batch-size`` against 1).

4M's pre-tokenizer has its own benchmark, ``pretokenize.py``.

    python benchmarks/pretokenize_lumina.py                  # ~40 s on 2 CPU cores
    python benchmarks/pretokenize_lumina.py --threads 1      # on a busy box
    python benchmarks/pretokenize_lumina.py --workers 1      # decoding in-process
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from image_codes import CONFIG, SEED, TIE_TOLERANCE, assignment_gaps, build_tokenizer, codes_line
from omegaconf import OmegaConf
from PIL import Image
from timing import alternate, measuring, parse_with_threads, rate_table

from polymodal.checkpoint.weights import export_weights
from polymodal.config import load_config
from polymodal.data.synth.conversations import write_conversations
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
from polymodal.tokenizers.loading import load_image_tokenizer
from polymodal.tokenizers.text.bpe import load_tokenizer, save_tokenizer, train_bpe

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
    parser.add_argument("--samples", type=int, default=200, help="scenes in the corpus (3 items each)")
    parser.add_argument("--workers", type=int, default=2, help="pretokenize_rank's decode processes")
    parser.add_argument("--batch-size", type=int, default=32, help="pretokenize_rank's encoder batch")
    parser.add_argument("--target-size", type=int, default=64, help="bucket target size and image side (px)")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    args = parse_with_threads(parser, argv, ("samples", "workers", "batch_size", "target_size", "rounds"))
    if args.target_size % 16:
        parser.error(f"--target-size must be a multiple of 16 (the corpus's image sides), got {args.target_size}")
    return args


def main(argv: Sequence[str] | None = None) -> LuminaResult:
    """Measure both sides over a fresh corpus, print the report and return the measurements."""
    args = parse_args(argv)
    with measuring(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> LuminaResult:
    with tempfile.TemporaryDirectory(prefix="pretokenize-lumina-") as scratch:
        inputs = lumina_inputs(Path(scratch) / "inputs", args.samples, args.target_size)
        result = measure_lumina(inputs, Path(scratch), args.batch_size, args.workers, args.rounds)
    print(lumina_report(result, args.target_size), flush=True)
    return result


if __name__ == "__main__":
    main()
