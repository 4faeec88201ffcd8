"""SHA-256 of every file of a checkpoint, written at save and checked before loading, so bit rot and truncated
shards are found instead of loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from polymodal.checkpoint.errors import CheckpointError

CHECKSUMS = "checksums.json"
_CHUNK = 1 << 20


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while block := stream.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(checkpoint: Path) -> None:
    """Record the hash of every file under ``checkpoint`` (call when all ranks have written theirs)."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {p.relative_to(checkpoint).as_posix(): _sha256(p) for p in files}
    (checkpoint / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def damage(checkpoint: Path) -> str | None:
    """What is wrong with ``checkpoint``'s files (the first missing or changed one), or None when all are intact."""
    try:
        sums = json.loads((checkpoint / CHECKSUMS).read_text())
    except FileNotFoundError:
        return f"it has no {CHECKSUMS}"
    except ValueError:
        return f"its {CHECKSUMS} is unreadable"
    for name, expected in sums.items():
        file = checkpoint / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != expected:
            return f"{name} does not match its checksum"
    return None


def verify(checkpoint: Path) -> None:
    """Raise :class:`CheckpointError` in one line if ``checkpoint`` is damaged."""
    problem = damage(checkpoint)
    if problem is not None:
        raise CheckpointError(f"checkpoint {checkpoint} is damaged ({problem}); resume from an older one")
