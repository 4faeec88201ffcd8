"""Files the library writes: crash- and race-safe creation, and the one place caches live.

**Caches** (tokenized corpora, shard indexes, the measured peak FLOP/s, tokenizers trained on demand) all live under
:func:`cache_root`: ``$POLYMODAL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/polymodal``, else
``~/.cache/polymodal``. Anything that takes a ``cache_dir`` takes this root (``None`` = this root) and keeps its
files in its own sub-folder of it (``shard_index/``, ``tokens/``, ...).

Several ranks may build the same tokenizer or token cache at once. Two mechanisms keep that safe:

* :func:`atomic_output` writes to a unique temporary name in the target directory and ``os.replace``-s
  it into place, so a reader never sees a half-written file (POSIX rename is atomic within a filesystem).
* :func:`exclusive_lock` serialises the *builders* (``fcntl.flock`` on a side ``.lock`` file, POSIX only),
  so the first process builds and the others wait and then load, instead of all of them doing the work.

A run directory belongs to one run at a time: :func:`run_directory_lock` refuses a second one at once, naming the
holder, instead of letting both write checkpoints and metrics into it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_DIR_ENV = "POLYMODAL_CACHE_DIR"


def cache_root() -> Path:
    """The root of every polymodal cache (module docstring); not created here."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "polymodal"


def cache_dir(subfolder: str, root: str | Path | None = None) -> Path:
    """``<root or cache_root()>/<subfolder>``: where one kind of cached file lives."""
    return Path(root if root is not None else cache_root()) / subfolder


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


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory."""


RUN_LOCK = ".lock"


@contextmanager
def run_directory_lock(directory: str | Path) -> Iterator[None]:
    """Hold ``<directory>/.lock`` exclusively, without waiting: raise :class:`RunDirectoryBusy` naming the holder
    (pid, host, since when) if another process has it. The lock is released when its process ends, however it ends
    (``flock``), so the lock file a killed run leaves behind is simply taken over."""
    path = Path(directory) / RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunDirectoryBusy(
                f"{directory} is in use by {holder}; wait for that run to end or give this one another output_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def usual_permissions(path: str | Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would (0666 minus the umask): some writers (safetensors) create
    files readable by their owner only, which a shared run directory cannot use."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
