"""Data loading: our random-access multimodal loader against a plain webdataset pipeline over the same tars.

Both sides read the same 4M-layout shard tree (``root/<modality>/shard-NNNNN.tar``), decode every member with
the same function (:func:`polymodal.data.multimodal.decode.decode_member`: PNG through PIL to a uint8 tensor,
npy to a tensor, json to an object) and collate with the same :func:`collate_with_absent`, at the same batch
size and number of DataLoader workers.

* (A) ours: ``ResumableLoader(MultimodalShards(pattern), batch_size, num_workers=W)``, shuffled: every member is
  one ranged read located through the cached tar index.
* (B) webdataset, as 4M builds it: ``ResampledShards`` over the shard names, a ``multi_tarfile_samples`` stage
  that streams the per-modality tars of a shard in lockstep and zips their members by key (raising if the keys
  diverge), decode, ``batched``, in a ``WebLoader``. No shuffle buffer, so (B) is its cheapest configuration.

Throughput: after warm-up batches, the time of the next ``--batches`` batches from a fresh iterator; the two
sides alternate A/B, B/A, ... for ``--rounds`` rounds per worker count, and the median and best are reported.
Resume: ours restores a position with ``load_state_dict`` and fetches one batch; a streaming pipeline can only
iterate and discard the batches before it. Both include starting the workers. Member reads: the raw reads of
random samples' members through :class:`~polymodal.data.multimodal.member_reader.MemberReader` (a descriptor
kept open per shard) against one open + read + close per member, as the reader did before. Array decodes: the
``.npy`` members of random samples decoded from their bytes by ``load_npy`` (numpy's header parse once per distinct
header) against ``np.load`` on the same bytes, as ``decode_member`` did before.

    python benchmarks/data_loading.py                      # 2,000 samples at 64 px, ~1 minute on 2 cores
    python benchmarks/data_loading.py --data /tmp/scenes   # write once, reuse on the next run
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from timing import Comparison, check_at_least, compare, platform_line, rate_table
from webdataset.tariterators import tarfile_samples

from polymodal.data.multimodal import MultimodalShards, ResumableLoader, collate_with_absent
from polymodal.data.multimodal.decode import decode_member, load_npy
from polymodal.data.multimodal.member_reader import MemberReader
from polymodal.data.multimodal.shard_index import MemberLocation
from polymodal.data.synth.writers import write_shards

MODALITIES = ("rgb", "depth", "semseg", "caption")
SEED = 0
Batch = dict[str, Any]


@dataclass(frozen=True)
class ShardTree:
    """A 4M shard tree: ``root/<modality>/<shard name>`` for every modality and shard name."""

    root: Path
    shard_names: tuple[str, ...]
    modalities: tuple[str, ...]

    @property
    def pattern(self) -> str:
        """The shard pattern :class:`MultimodalShards` reads (shard names are ``shard-00000.tar`` onwards)."""
        last = len(self.shard_names) - 1
        return f"{self.root}/[{','.join(self.modalities)}]/shard-{{00000..{last:05d}}}.tar"


def find_shard_tree(root: Path, modalities: Sequence[str]) -> ShardTree | None:
    """The tree under ``root`` if every modality has the same contiguous ``shard-NNNNN.tar`` files, else None."""
    names = sorted(path.name for path in (root / modalities[0]).glob("shard-*.tar"))
    if not names:
        return None
    expected = [f"shard-{i:05d}.tar" for i in range(len(names))]
    for modality in modalities:
        found = sorted(path.name for path in (root / modality).glob("shard-*.tar"))
        if found != expected:
            raise ValueError(
                f"{root}: {modality}/ holds shards {found[:3]}...({len(found)}) but the benchmark needs "
                f"{expected[0]}..{expected[-1]} in every one of {list(modalities)}"
            )
    return ShardTree(root, tuple(expected), tuple(modalities))


def prepare_shards(root: Path, num_samples: int, samples_per_shard: int, size: int) -> ShardTree:
    """Reuse the shard tree under ``root``, or write a synthetic one there (2 writer processes)."""
    tree = find_shard_tree(root, MODALITIES)
    if tree is not None:
        return tree
    write_shards(root, num_samples, samples_per_shard, seed=SEED, size=size, workers=2, modalities=MODALITIES)
    tree = find_shard_tree(root, MODALITIES)
    if tree is None:
        raise RuntimeError(f"write_shards wrote no shards under {root}")
    return tree


def collate(samples: list[dict[str, Any]]) -> Batch:
    """The collate function of both sides."""
    return collate_with_absent(samples, MODALITIES)


# ---------------------------------------------------------------- (A) ours


def ours_loader(dataset: MultimodalShards, batch_size: int, workers: int) -> ResumableLoader:
    return ResumableLoader(dataset, batch_size=batch_size, seed=SEED, num_workers=workers, collate=collate)


def position_state(loader: ResumableLoader, batch: int) -> dict[str, int]:
    """The state of ``loader`` after it has handed out ``batch`` batches (the next one is batch ``batch``)."""
    state = loader.state_dict()
    state["epoch"], state["batch_in_epoch"] = divmod(batch, loader.batches_per_epoch)
    return state


# ---------------------------------------------------------------- (B) webdataset


def multi_tarfile_samples(shards: Iterable[dict[str, str]], root: Path, modalities: Sequence[str]) -> Iterator[dict]:
    """For each ``{"url": shard name}``: stream that shard's per-modality tars in lockstep, one dict per key.

    The dict holds ``__key__`` and the raw bytes of each member under its suffix (``rgb.png``, ``depth.npy``).
    """
    for shard in shards:
        name = shard["url"]
        streams = [tarfile_samples([{"url": str(root / modality / name)}]) for modality in modalities]
        for members in zip(*streams, strict=True):
            key = members[0]["__key__"]
            sample = {"__key__": key}
            for modality, member in zip(modalities, members, strict=True):
                if member["__key__"] != key:
                    raise ValueError(f"{name}: {modality} has key {member['__key__']!r} where the others have {key!r}")
                sample.update((suffix, data) for suffix, data in member.items() if not suffix.startswith("__"))
            yield sample


def decode_raw_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """``{"rgb.png": bytes, ...}`` -> ``{"rgb": tensor, ...}`` through the same decoder as ours."""
    sample = {"__key__": raw["__key__"]}
    for suffix, data in raw.items():
        if suffix.startswith("__"):
            continue
        modality, _, extension = suffix.partition(".")
        sample[modality] = decode_member(modality, extension.rsplit(".", 1)[-1], data)
    return sample


def baseline_pipeline(tree: ShardTree, batch_size: int) -> wds.DataPipeline:
    """The 4M-style webdataset pipeline: resampled shards, zipped modality tars, decode, full batches."""
    return wds.DataPipeline(
        wds.ResampledShards(list(tree.shard_names), seed=SEED, deterministic=True),
        partial(multi_tarfile_samples, root=tree.root, modalities=tree.modalities),
        wds.map(decode_raw_sample),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )


def baseline_loader(tree: ShardTree, batch_size: int, workers: int) -> wds.WebLoader:
    return wds.WebLoader(
        baseline_pipeline(tree, batch_size),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )


# ---------------------------------------------------------------- measuring


def seconds_for_batches(batches: Iterator[Batch], warmup: int, count: int) -> float:
    """Seconds to take ``count`` batches after ``warmup`` untimed ones."""
    for _ in range(warmup):
        next(batches)
    started = time.perf_counter()
    for _ in range(count):
        next(batches)
    return time.perf_counter() - started


def seconds_to_batch(start: Callable[[], Iterator[Batch]], discard: int) -> float:
    """Seconds from calling ``start`` until the batch after ``discard`` discarded ones is in hand."""
    started = time.perf_counter()
    batches = start()
    for _ in range(discard + 1):
        next(batches)
    return time.perf_counter() - started


@dataclass
class WorkerResult:
    workers: int
    throughput: Comparison  # seconds for ``batches`` batches
    resume: Comparison  # seconds to the first batch at ``resume_batch``


def measure_workers(dataset: MultimodalShards, tree: ShardTree, args: argparse.Namespace, workers: int) -> WorkerResult:
    def ours_throughput() -> float:
        return seconds_for_batches(ours_loader(dataset, args.batch_size, workers), args.warmup, args.batches)

    def baseline_throughput() -> float:
        batches = iter(baseline_loader(tree, args.batch_size, workers))
        return seconds_for_batches(batches, args.warmup, args.batches)

    def ours_resume() -> float:
        loader = ours_loader(dataset, args.batch_size, workers)
        state = position_state(loader, args.resume_batch)

        def restored() -> ResumableLoader:
            loader.load_state_dict(state)
            return loader

        return seconds_to_batch(restored, discard=0)

    def baseline_resume() -> float:
        return seconds_to_batch(lambda: iter(baseline_loader(tree, args.batch_size, workers)), args.resume_batch)

    throughput = compare(ours_throughput, baseline_throughput, args.rounds)
    resume = compare(ours_resume, baseline_resume, args.rounds)
    return WorkerResult(workers, throughput, resume)


def throughput_report(result: WorkerResult, batch_size: int, batches: int, warmup: int) -> str:
    samples = batch_size * batches
    ours = [samples / s for s in result.throughput.ours_s]
    baseline = [samples / s for s in result.throughput.baseline_s]
    labels = ("ours (A)", "webdataset (B)", "ratio ours/baseline")
    return "\n".join(
        [
            f"workers={result.workers}: throughput, {len(ours)} rounds of {batches} batches x {batch_size} "
            f"after {warmup} warm-up",
            *rate_table("samples", labels, ours, baseline),
        ]
    )


def resume_report(result: WorkerResult, resume_batch: int) -> str:
    ours, baseline = result.resume.ours_s, result.resume.baseline_s
    ours_median, baseline_median = statistics.median(ours), statistics.median(baseline)
    return "\n".join(
        [
            f"workers={result.workers}: resume at batch {resume_batch}, {len(ours)} rounds",
            f"  {'':38}{'median s':>10}{'best s':>10}",
            f"  {'ours: load_state_dict + first batch':38}{ours_median:10.3f}{min(ours):10.3f}",
            f"  {f'webdataset: discard {resume_batch} batches + 1':38}{baseline_median:10.3f}{min(baseline):10.3f}",
            f"  {'ratio ours/baseline':38}{ours_median / baseline_median:10.3f}{min(ours) / min(baseline):10.3f}",
        ]
    )


def seconds_to_read(read: Callable[[str, int, int], bytes], members: Sequence[MemberLocation]) -> float:
    start = time.perf_counter()
    for member in members:
        read(member.url, member.offset, member.size)
    return time.perf_counter() - start


def member_read_report(dataset: MultimodalShards, rounds: int, samples: int = 2000) -> str:
    """Raw member reads (no decoding) of ``samples`` random samples: a descriptor kept open per shard (``pread``,
    ours) against one open + read + close per member (fsspec's ``cat_file`` range read, ours before)."""
    order = random.Random(SEED).sample(range(len(dataset)), min(samples, len(dataset)))
    members = [location for sample_id in order for location in dataset.locate_members(sample_id)[1].values()]
    reader = MemberReader(dataset.fs)

    def range_request(url: str, offset: int, size: int) -> bytes:
        return dataset.fs.cat_file(url, start=offset, end=offset + size)

    result = compare(
        lambda: seconds_to_read(reader.read, members), lambda: seconds_to_read(range_request, members), rounds
    )
    rate = lambda seconds: [len(members) / s for s in seconds]  # noqa: E731
    lines = [f"member reads, {len(members)} members of {len(order)} random samples, {rounds} rounds:"]
    labels = ("kept-open pread (ours)", "open per member (before)", "ratio")
    return "\n".join(lines + rate_table("members", labels, rate(result.ours_s), rate(result.baseline_s)))


def seconds_to_decode(load: Callable[[bytes], np.ndarray], payloads: Sequence[bytes]) -> float:
    start = time.perf_counter()
    for payload in payloads:
        load(payload)
    return time.perf_counter() - start


def npy_decode_report(dataset: MultimodalShards, rounds: int, samples: int = 2000) -> str:
    """Decoding the ``.npy`` members of ``samples`` random samples from their bytes: ``load_npy`` (ours, numpy's
    header parse once per distinct header) against ``np.load`` on the bytes (ours before; every header parsed)."""
    order = random.Random(SEED).sample(range(len(dataset)), min(samples, len(dataset)))
    reader = MemberReader(dataset.fs)
    payloads = [
        reader.read(location.url, location.offset, location.size)
        for sample_id in order
        for location in dataset.locate_members(sample_id)[1].values()
        if location.extension.endswith(".npy")
    ]
    if not payloads:
        return "npy decodes: the shards hold no .npy members"
    numpy_load = lambda payload: np.load(io.BytesIO(payload), allow_pickle=False)  # noqa: E731
    result = compare(
        lambda: seconds_to_decode(load_npy, payloads), lambda: seconds_to_decode(numpy_load, payloads), rounds
    )
    rate = lambda seconds: [len(payloads) / s for s in seconds]  # noqa: E731
    lines = [f"npy decodes, {len(payloads)} arrays of {len(order)} random samples, {rounds} rounds:"]
    labels = ("load_npy (ours)", "np.load (before)", "ratio")
    return "\n".join(lines + rate_table("arrays", labels, rate(result.ours_s), rate(result.baseline_s)))


def profile_ours(dataset: MultimodalShards, batch_size: int, batches: int, top: int) -> str:
    """cProfile of ours in the main process (workers=0): the top functions by own time."""
    loader = ours_loader(dataset, batch_size, workers=0)
    next(loader)
    profiler = cProfile.Profile()
    profiler.runcall(seconds_for_batches, loader, 0, batches)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="shard tree to reuse, or to write if absent (default: a temporary directory, removed afterwards)",
    )
    parser.add_argument("--samples", type=int, default=2000, help="samples to write")
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to run")
    parser.add_argument("--rounds", type=int, default=7, help="A/B rounds per worker count")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per side and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before timing")
    parser.add_argument("--resume-batch", type=int, default=50, help="batch to resume at")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print the top N functions of a cProfile of ours at workers=0",
    )
    args = parser.parse_args(argv)
    check_at_least(parser, args, ("samples", "samples_per_shard", "size", "batch_size", "rounds", "batches"))
    check_at_least(parser, args, ("warmup", "resume_batch", "profile"), minimum=0)
    if any(w < 0 for w in args.workers):
        parser.error(f"--workers must all be >= 0, got {args.workers}")
    return args


def run(root: Path, cache_dir: Path, args: argparse.Namespace) -> list[WorkerResult]:
    tree = prepare_shards(root, args.samples, args.samples_per_shard, args.size)
    dataset = MultimodalShards(tree.pattern, cache_dir=cache_dir)
    if len(dataset) < args.batch_size:
        raise ValueError(f"{root} holds {len(dataset)} samples, fewer than one batch of {args.batch_size}")
    print(
        f"data: {len(dataset)} samples in {len(tree.shard_names)} shards x {len(tree.modalities)} modalities "
        f"({','.join(tree.modalities)}) under {root}",
        flush=True,
    )
    results = []
    for workers in args.workers:
        result = measure_workers(dataset, tree, args, workers)
        print(throughput_report(result, args.batch_size, args.batches, args.warmup), flush=True)
        print(resume_report(result, args.resume_batch), flush=True)
        results.append(result)
    print(member_read_report(dataset, args.rounds), flush=True)
    print(npy_decode_report(dataset, args.rounds), flush=True)
    if args.profile:
        print(profile_ours(dataset, args.batch_size, args.batches, args.profile), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> list[WorkerResult]:
    """Prepare the shards, run every worker count, print the reports and return the measurements."""
    args = parse_args(argv)
    print(platform_line(f"webdataset {wds.__version__}"), flush=True)
    with tempfile.TemporaryDirectory(prefix="data-loading-") as scratch:
        root = Path(scratch) / "shards" if args.data is None else args.data
        return run(root, Path(scratch) / "index-cache", args)


if __name__ == "__main__":
    main()
