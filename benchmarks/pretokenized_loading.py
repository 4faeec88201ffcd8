"""Reading pre-tokenized Lumina-mGPT items: our memory-mapped record set against upstream's one pickle per item.

Both sides hold the same items. Ours is the record set ``polymodal lumina pretokenize`` + ``concat-records`` make
of a synthetic conversation corpus (``--samples`` scenes, 3 items each, images at ``--target-size`` px, the BPE and
rgb_tiny tokenizer of benchmarks/pretokenize_lumina.py): packed safetensors shards (uint16 tokens, a packbits label
mask, int64 offsets) that :class:`RecordSet` memory-maps. Upstream's form holds the same tokens and labels: one file
``files/{i}.pkl`` per item, ``{"token": [ids], "label": [id, or -100 where not trained], "id": i}`` in the default
pickle protocol, and a JSON record list ``[{"file", "len", "id"}, ...]``.

* (A) ours: ``RecordSet(record.json)`` opened once; an item is ``record_set.item(i)`` -> (int64 tokens, bool labels).
* (B) upstream: the record list loaded once; an item is ``open(file)`` + ``pickle.load`` -> the dict of two lists.

Reads: every item in one shuffled order (the same for both, from ``--seed``), ``--passes`` times per round, tokens
and labels of each item as a training loader reads them. After one untimed pass each, A and B alternate (A/B,
B/A, ...) for ``--rounds`` rounds in this process; the median and best items/s and their ratio are printed. The OS
page cache is warm for both (the files were just written and read once before timing): cold reads from disk are
not measured. Same items: before timing every item is read from both sides and compared (equal tokens; upstream's
label is the token where ours is trained and -100 elsewhere).

Size: bytes per token on disk of ours (the shard files alone, and with ``record.json`` and ``manifest.json``) and of
upstream (the pickles and the record list), as file sizes and as allocated blocks. The goals of the issue, at least
10x the items/s of upstream and at most 2.2 bytes per token, are printed as met or not, never asserted.

    python benchmarks/pretokenized_loading.py                        # ~1,000 items, ~1 minute on 2 CPU cores
    python benchmarks/pretokenized_loading.py --target-size 256      # longer items (~1,000 tokens per image)
    python benchmarks/pretokenized_loading.py --profile 20           # + cProfile of ours
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pretokenize_lumina import (
    IGNORE,
    build_record_set,
    lumina_inputs,
    read_upstream_item,
    save_upstream_item,
    save_upstream_records,
)
from timing import check_at_least, compare, platform_line, rate_table

from polymodal.families.lumina.records import MANIFEST, RecordSet

GOAL_RATIO = 10.0  # items/s, ours over upstream
GOAL_BYTES_PER_TOKEN = 2.2  # ours, shards with record.json and manifest.json
PROFILE_PASSES = 20  # reads of every item under the profiler


def write_upstream_form(record_set: RecordSet, out_dir: Path) -> list[dict[str, Any]]:
    """Every item of ``record_set`` in upstream's form under ``out_dir`` (item ``i`` as ``files/{i}.pkl``); the
    record list (also written as ``out_dir/record.json``)."""
    files = out_dir / "files"
    files.mkdir(parents=True)
    entries = []
    for i in range(len(record_set)):
        tokens, trained = record_set.item(i)
        entries.append(save_upstream_item(files, i, tokens.tolist(), np.where(trained, tokens, IGNORE).tolist()))
    save_upstream_records(out_dir / "record.json", entries)
    return entries


def load_upstream_records(out_dir: Path) -> list[dict[str, Any]]:
    """The record list, by item number (upstream's dataset loads it once)."""
    entries = json.loads((out_dir / "record.json").read_text())
    return sorted(entries, key=lambda entry: entry["id"])


def differing_items(record_set: RecordSet, entries: list[dict[str, Any]]) -> list[int]:
    """Items whose tokens or labels differ between the two sides (a different item count makes all differ)."""
    if len(entries) != len(record_set):
        return list(range(max(len(entries), len(record_set))))
    differ = []
    for i, entry in enumerate(entries):
        tokens, trained = record_set.item(i)
        upstream = read_upstream_item(entry)
        same = upstream["id"] == i and np.array_equal(tokens, np.asarray(upstream["token"], dtype=np.int64))
        if not (same and np.array_equal(np.where(trained, tokens, IGNORE), np.asarray(upstream["label"]))):
            differ.append(i)
    return differ


@dataclass(frozen=True)
class DiskSize:
    """Bytes of a set of files: the sum of their sizes, and the blocks the file system allocated for them."""

    files: int
    allocated: int

    @classmethod
    def of(cls, paths: Sequence[Path]) -> DiskSize:
        stats = [path.stat() for path in paths]
        return cls(sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats))

    def __add__(self, other: DiskSize) -> DiskSize:
        return DiskSize(self.files + other.files, self.allocated + other.allocated)


def disk_sizes(record_path: Path, upstream_dir: Path) -> dict[str, DiskSize]:
    """Ours (shards; shards + record.json + manifest.json) and upstream (pickles + record list)."""
    shards = DiskSize.of(sorted((record_path.parent / "shards").rglob("*.safetensors")))
    pickles = DiskSize.of(sorted((upstream_dir / "files").glob("*.pkl")))
    return {
        "ours: shards": shards,
        "ours: shards + record + manifest": shards + DiskSize.of([record_path, record_path.parent / MANIFEST]),
        "upstream: pickles + record list": pickles + DiskSize.of([upstream_dir / "record.json"]),
    }


def read_ours(record_set: RecordSet, order: list[int], passes: int) -> float:
    """Seconds to read tokens and labels of the items in ``order``, ``passes`` times, through the record set."""
    started = time.perf_counter()
    for _ in range(passes):
        for i in order:
            record_set.item(i)
    return time.perf_counter() - started


def read_upstream(entries: list[dict[str, Any]], order: list[int], passes: int) -> float:
    """Seconds to open and unpickle the files of the items in ``order``, ``passes`` times."""
    started = time.perf_counter()
    for _ in range(passes):
        for i in order:
            read_upstream_item(entries[i])
    return time.perf_counter() - started


@dataclass
class LoadingResult:
    """Seconds per round of both sides (paired by round), the item check and the sizes on disk."""

    items: int
    tokens: int
    reads_per_round: int
    ours_s: list[float]
    upstream_s: list[float]
    differing_items: list[int]
    sizes: dict[str, DiskSize]

    @property
    def reads_identical(self) -> bool:
        return not self.differing_items

    def items_per_s(self, seconds: list[float]) -> list[float]:
        return [self.reads_per_round / s for s in seconds]

    @property
    def median_ratio(self) -> float:
        ours, upstream = self.items_per_s(self.ours_s), self.items_per_s(self.upstream_s)
        return statistics.median(ours) / statistics.median(upstream)

    def bytes_per_token(self, name: str, allocated: bool = False) -> float:
        size = self.sizes[name]
        return (size.allocated if allocated else size.files) / self.tokens


def report(result: LoadingResult, rounds: int, passes: int) -> str:
    ours, upstream = result.items_per_s(result.ours_s), result.items_per_s(result.upstream_s)
    labels = ("ours: RecordSet.item (A)", "upstream: open + pickle (B)", "ratio ours/upstream")
    identical = (
        f"reads identical: True ({result.items} items: equal tokens and labels)"
        if result.reads_identical
        else f"reads identical: False ({len(result.differing_items)} items differ, first {result.differing_items[:5]})"
    )
    width = max(len(name) for name in result.sizes) + 2
    sizes = [
        f"  {name:{width}}{result.bytes_per_token(name):10.2f}{result.bytes_per_token(name, allocated=True):12.2f}"
        for name in result.sizes
    ]
    ours_bytes = result.bytes_per_token("ours: shards + record + manifest")
    upstream_bytes = result.bytes_per_token("upstream: pickles + record list")
    ratio_met = "met" if result.median_ratio >= GOAL_RATIO else "NOT met"
    bytes_met = "met" if ours_bytes <= GOAL_BYTES_PER_TOKEN else "NOT met"
    return "\n".join(
        [
            identical,
            f"random reads: {rounds} rounds x {passes} pass{'es' if passes > 1 else ''} over {result.items} items "
            "in one shuffled order "
            "(tokens + labels of each), page cache warm for both",
            *rate_table("items", labels, ours, upstream, 30),
            f"bytes/token on disk ({result.tokens:,} tokens):",
            f"  {'':{width}}{'files':>10}{'allocated':>12}",
            *sizes,
            f"  {'ratio upstream/ours (files)':{width}}{upstream_bytes / ours_bytes:10.2f}",
            f"goal items/s ours/upstream >= {GOAL_RATIO:.0f}: {ratio_met} (median {result.median_ratio:.2f}); "
            f"goal bytes/token <= {GOAL_BYTES_PER_TOKEN}: {bytes_met} ({ours_bytes:.3f}, shards + record + manifest)",
        ]
    )


def profile(read: Callable[[], float], top: int) -> str:
    """cProfile of one ``read`` round: the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.runcall(read)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=340, help="scenes in the corpus (3 items each)")
    parser.add_argument("--target-size", type=int, default=128, help="bucket target size and image side (px)")
    parser.add_argument("--rounds", type=int, default=9, help="A/B rounds")
    parser.add_argument("--passes", type=int, default=3, help="reads of every item per side and round")
    parser.add_argument("--seed", type=int, default=0, help="of the shuffled read order")
    parser.add_argument("--workers", type=int, default=2, help="decode processes of the pre-tokenizer (setup only)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help=f"also print the top N functions of a cProfile of ours ({PROFILE_PASSES} passes)",
    )
    args = parser.parse_args(argv)
    check_at_least(parser, args, ("samples", "target_size", "rounds", "passes", "workers"))
    if args.target_size % 16:
        parser.error(f"--target-size must be a multiple of 16 (the corpus's image sides), got {args.target_size}")
    check_at_least(parser, args, ("profile",), minimum=0)
    return args


def run(scratch: Path, args: argparse.Namespace) -> LoadingResult:
    inputs = lumina_inputs(scratch / "inputs", args.samples, args.target_size, workers=args.workers)
    record_path = build_record_set(inputs, scratch / "records", batch_size=32, workers=args.workers)
    record_set = RecordSet(record_path)
    write_upstream_form(record_set, scratch / "upstream")
    entries = load_upstream_records(scratch / "upstream")
    tokens = int(record_set.lengths.sum())
    print(
        f"data: {len(record_set)} items, {tokens:,} tokens ({tokens / len(record_set):.0f} per item, longest "
        f"{record_set.lengths.max()}) from {args.samples} scenes at {args.target_size} px",
        flush=True,
    )
    differ = differing_items(record_set, entries)  # also the untimed first read of every file
    order = np.random.default_rng(args.seed).permutation(len(record_set)).tolist()

    def ours() -> float:
        return read_ours(record_set, order, args.passes)

    def upstream() -> float:
        return read_upstream(entries, order, args.passes)

    ours(), upstream()  # warm-up
    timings = compare(ours, upstream, args.rounds)
    result = LoadingResult(
        items=len(record_set),
        tokens=tokens,
        reads_per_round=len(order) * args.passes,
        ours_s=timings.ours_s,
        upstream_s=timings.baseline_s,
        differing_items=differ,
        sizes=disk_sizes(record_path, scratch / "upstream"),
    )
    print(report(result, args.rounds, args.passes), flush=True)
    if args.profile:
        print(profile(lambda: read_ours(record_set, order, PROFILE_PASSES), args.profile), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> LoadingResult:
    """Build both forms of the same items in a temporary directory, measure, print the report."""
    args = parse_args(argv)
    print(platform_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="pretokenized-loading-") as scratch:
        return run(Path(scratch), args)


if __name__ == "__main__":
    main()
