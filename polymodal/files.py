"""Crash- and race-safe file creation for on-disk caches shared by several processes.

Several ranks may build the same tokenizer or token cache at once. Two mechanisms keep that safe:

* :func:`atomic_output` writes to a unique temporary name in the target directory and ``os.replace``-s
  it into place, so a reader never sees a half-written file (POSIX rename is atomic within a filesystem).
* :func:`exclusive_lock` serialises the *builders* (``fcntl.flock`` on a side ``.lock`` file, POSIX only),
  so the first process builds and the others wait and then load, instead of all of them doing the work.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock tied to ``path`` (the lock file is ``<path>.lock``)."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
