"""What the A/B benchmarks share: alternating two sides round by round, the rate table, the platform line and the
``--threads`` option and its thread count while measuring (:func:`parse_with_threads`, :func:`measuring`).

The scripts import it as a sibling (``from timing import ...``): ``python benchmarks/<script>.py`` puts this
folder first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

OursResult = TypeVar("OursResult")
BaselineResult = TypeVar("BaselineResult")


def alternate(
    ours: Callable[[], OursResult], baseline: Callable[[], BaselineResult], rounds: int
) -> list[tuple[OursResult, BaselineResult]]:
    """Run both ``rounds`` times, ours first in even rounds and the baseline first in odd ones, so neither side
    always pays (or profits from) going first; each round's results as ``(ours, baseline)``."""
    results = []
    for round_index in range(rounds):
        if round_index % 2 == 0:
            ours_result = ours()
            baseline_result = baseline()
        else:
            baseline_result = baseline()
            ours_result = ours()
        results.append((ours_result, baseline_result))
    return results


@dataclass
class Comparison:
    """Seconds per round of ours (A) and the baseline (B); paired by round."""

    ours_s: list[float] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)


def compare(ours: Callable[[], float], baseline: Callable[[], float], rounds: int) -> Comparison:
    """:func:`alternate` over two sides that each return the seconds of one round."""
    pairs = alternate(ours, baseline, rounds)
    return Comparison([ours_s for ours_s, _ in pairs], [baseline_s for _, baseline_s in pairs])


def rate_table(
    unit: str, labels: tuple[str, str, str], ours: Sequence[float], baseline: Sequence[float], label_width: int = 28
) -> list[str]:
    """Median and best ``unit``/s of ours and the baseline and their ratios; ``labels`` name the ours, baseline
    and ratio rows."""
    median_column, best_column = f"median {unit}/s", f"best {unit}/s"
    m, b = len(median_column) + 2, len(best_column) + 2
    ours_label, baseline_label, ratio_label = labels
    ours_median, baseline_median = statistics.median(ours), statistics.median(baseline)
    return [
        f"  {'':{label_width}}{median_column:>{m}}{best_column:>{b}}",
        f"  {ours_label:{label_width}}{ours_median:{m}.0f}{max(ours):{b}.0f}",
        f"  {baseline_label:{label_width}}{baseline_median:{m}.0f}{max(baseline):{b}.0f}",
        f"  {ratio_label:{label_width}}{ours_median / baseline_median:{m}.2f}{max(ours) / max(baseline):{b}.2f}",
    ]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def platform_line(*versions: str) -> str:
    """What the numbers were measured on: python, torch (then ``versions``, e.g. ``"webdataset 0.2.100"``), the
    torch threads, the CPUs and the OS."""
    return ", ".join(
        [
            f"python {platform.python_version()}",
            f"torch {torch.__version__}",
            *versions,
            f"{torch.get_num_threads()} torch threads",
            f"{os.cpu_count()} CPUs ({cpu_model()})",
            platform.platform(),
        ]
    )


def check_at_least(
    parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str], minimum: int = 1
) -> None:
    """A parser error unless each option named in ``names`` (as attributes: ``batch_size``) is at least ``minimum``
    (an option left at None passes)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def parse_with_threads(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    positive: Sequence[str],
    default_threads: int | None = None,
) -> argparse.Namespace:
    """``argv`` parsed by ``parser`` with a ``--threads`` option added (see :func:`measuring`; default
    ``default_threads``, None: torch's own choice); the options named in ``positive`` and ``--threads`` must be at
    least 1."""
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads,
        help="torch.set_num_threads while measuring (unset: torch's own choice); 1 on a busy box avoids the "
        "scheduler stalls that make every multi-threaded op cost a time slice",
    )
    args = parser.parse_args(argv)
    check_at_least(parser, args, (*positive, "threads"))
    return args


@contextmanager
def measuring(threads: int | None, *versions: str) -> Iterator[None]:
    """While measuring: ``torch.set_num_threads(threads)`` (None: torch's own choice), restored on the way out, and
    first the platform line (with ``versions``) printed."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        print(platform_line(*versions), flush=True)
        yield
    finally:
        torch.set_num_threads(previous)
