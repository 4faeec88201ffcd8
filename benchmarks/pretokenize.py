"""4M pre-tokenization: encoding crops in batches, as ``polymodal pretokenize-4m`` does, against one at a time.

Model: the rgb_tiny tokenizer of ``image_codes.py`` (64 px -> 8x8 codes), random weights from a fixed seed.

* (A) batched: :func:`polymodal.families.fourm.pretokenize.encode_crops` with ``--batch-size`` crops per forward pass,
  the function the pretokenizer calls (its default batch size unless told otherwise).
* (B) one at a time: ``tokenizer.encode(crop[None])`` for each crop, then concatenated.

Both run on CPU under ``torch.inference_mode()`` over the same ``--images`` crops: synthetic scenes rendered in
memory at the tokenizer's 64 px. After one untimed warm-up batch each, A and B alternate (A/B, B/A, ...) for
``--rounds`` rounds; the median and best images/s are reported, and their ratio batched / one-at-a-time.

Codes: both sides must give the same codes, and the script prints ``codes identical``; differing codes are judged
by their assignment gap (``image_codes.py``: below ``TIE_TOLERANCE`` a float near-tie of batch 1 against batch N).

End to end: :func:`pretokenize_4m` once over a synthetic rgb shard tree (``--samples`` scenes, 5 crops each) in
a temporary directory, in this process, including the shard index build: an absolute samples/s.

Lumina-mGPT's pre-tokenizer has its own benchmark, ``pretokenize_lumina.py``.

    python benchmarks/pretokenize.py                 # ~1 minute on 2 CPU cores
    python benchmarks/pretokenize.py --threads 1     # on a busy box
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from image_codes import SEED, TIE_TOLERANCE, assignment_gaps, build_tokenizer, codes_line
from timing import alternate, measuring, parse_with_threads, rate_table

from polymodal.data.synth.render import render_scene
from polymodal.data.synth.writers import write_shards
from polymodal.families.fourm.pretokenize import DEFAULT_BATCH_SIZE, CropOptions, encode_crops, pretokenize_4m
from polymodal.tokenizers.image.tokenizer import ImageTokenizer


def render_crops(count: int, size: int) -> torch.Tensor:
    """``count`` synthetic rgb scenes at ``size`` px, float [count, 3, size, size] in [0, 1]."""
    return torch.stack([render_scene(SEED, index, size)["rgb"] for index in range(count)]).float() / 255.0


def encode_one_at_a_time(tokenizer: ImageTokenizer, crops: torch.Tensor) -> np.ndarray:
    """The baseline: the model called on each crop alone."""
    return torch.cat([tokenizer.encode(crop[None]).flatten(1) for crop in crops]).numpy()


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="crops encoded per side and round")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="crops per forward pass of the batched side"
    )
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    parser.add_argument("--samples", type=int, default=400, help="scenes in the end-to-end shard tree")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    return parse_with_threads(parser, argv, ("images", "batch_size", "rounds", "samples", "samples_per_shard"))


def main(argv: Sequence[str] | None = None) -> EncodingResult:
    """Measure both sides and the end-to-end run, print the report and return the measurements."""
    args = parse_args(argv)
    with measuring(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> EncodingResult:
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


if __name__ == "__main__":
    main()
