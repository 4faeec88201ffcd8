"""Progress of long offline work (rendering scenes, pre-tokenizing shards, evaluating): a bar on a terminal, and off
one (a batch job, a log file) a plain line every tenth of the way, so the log shows the work moving."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import Progress


@contextmanager
def progress(description: str, total: int, terminal: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; report ``description`` at ``done/total`` as a bar (``terminal``, default: stderr is a
    terminal) or as lines ``description: 40/100 (40%), 12.3/s, about 5s left`` on stderr."""
    if terminal if terminal is not None else sys.stderr.isatty():
        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    start, done, next_report = time.perf_counter(), 0, max(1, total // 10)

    def advance(n: int = 1) -> None:
        nonlocal done, next_report
        done += n
        if done >= next_report or done == total:
            elapsed = max(time.perf_counter() - start, 1e-9)
            rate = done / elapsed
            left = f", about {(total - done) / rate:.0f}s left" if done < total else f" in {elapsed:.0f}s"
            print(
                f"{description}: {done}/{total} ({done / total:.0%}), {rate:.3g}/s{left}", file=sys.stderr, flush=True
            )
            while next_report <= done:
                next_report += max(1, total // 10)

    yield advance
