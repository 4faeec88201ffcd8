"""Record sets on disk: the manifest, each rank's record of finished shards, their merge, and reading them back.

An output directory of ``polymodal lumina pretokenize`` holds::

    manifest.json                               settings, vocabulary layout, tokenizer hashes (one for all ranks)
    shards/RRRRR-of-SSSSS/chunk-CCCCCC.safetensors   token shards (polymodal.families.lumina.shards)
    RRRRR-of-SSSSS-record.json                  rank R's finished shards; "complete" once its partition is done
    RRRRR-of-SSSSS-errors.jsonl                 rank R's per-item error report (index, id, reason, detail)
    record.json                                 written by ``concat-records``: every rank's shards, checked

Every file is written atomically and holds no time stamp, so a rank killed at any moment and run again ends with
the bytes of an uninterrupted run.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.families.lumina.shards import ItemError, MappedShard
from polymodal.families.lumina.vocabulary import VocabularyLayout
from polymodal.files import atomic_output

FORMAT = "polymodal-lumina-records"
VERSION = 1
MANIFEST = "manifest.json"
_RANK_RECORD = re.compile(r"^(\d+)-of-(\d+)-record\.json$")


class RecordError(ValueError):
    """A record set that cannot be used as asked (said in one line)."""


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(_dump(manifest)).hexdigest()


def rank_name(rank: int, splits: int) -> str:
    return f"{rank:05d}-of-{splits:05d}"


def shard_path(out_dir: str | Path, rank: int, splits: int, chunk: int) -> Path:
    return Path(out_dir) / "shards" / rank_name(rank, splits) / f"chunk-{chunk:06d}.safetensors"


def write_or_check_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> str:
    """Write ``manifest.json`` (the same bytes from every rank), or refuse a directory made with other settings."""
    path = Path(out_dir) / MANIFEST
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != manifest:
            differ = sorted(k for k in {*existing, *manifest} if existing.get(k) != manifest.get(k))
            raise RecordError(
                f"{out_dir} holds records made with other settings (they differ in {', '.join(differ)}); "
                "use another --out_dir, or the same settings to resume"
            )
    else:
        _write(path, _dump(manifest))
    return manifest_sha256(manifest)


@dataclass
class RankRecord:
    """The finished shards of one rank, saved after each one (``{rank}-of-{splits}-record.json``)."""

    out_dir: Path
    rank: int
    splits: int
    manifest_sha256: str
    shards: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: dict[int, list[ItemError]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.out_dir / f"{rank_name(self.rank, self.splits)}-record.json"

    @property
    def errors_path(self) -> Path:
        return self.out_dir / f"{rank_name(self.rank, self.splits)}-errors.jsonl"

    def add(self, chunk: int, shard: MappedShard) -> None:
        self.shards[chunk] = {
            "path": shard.path.relative_to(self.out_dir).as_posix(),
            "items": len(shard),
            "tokens": len(shard.tokens),
            "errors": len(shard.errors),
            "sha256": file_sha256(shard.path),
        }
        self.errors[chunk] = shard.errors

    def save(self, complete: bool) -> None:
        chunks = [self.shards[c] for c in sorted(self.shards)]
        errors = [e for c in sorted(self.errors) for e in self.errors[c]]
        record = {
            "format": FORMAT,
            "version": VERSION,
            "manifest_sha256": self.manifest_sha256,
            "rank": self.rank,
            "splits": self.splits,
            "complete": complete,
            "shards": chunks,
            "items": sum(c["items"] for c in chunks),
            "tokens": sum(c["tokens"] for c in chunks),
            "errors": dict(sorted(Counter(e.reason for e in errors).items())),
        }
        report = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in errors)
        _write(self.errors_path, report.encode())
        _write(self.path, _dump(record))


def concat_records(sub_record_dir: str | Path, save_path: str | Path) -> dict[str, Any]:
    """Merge the rank records of ``sub_record_dir`` into one ``record.json`` at ``save_path``.

    Refuses (RecordError) a missing or unfinished rank, ranks of different ``--splits`` or settings, a shard that
    changed since its rank recorded it, and any input item present twice. Returns the merged record.
    """
    root = Path(sub_record_dir)
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise RecordError(f"{root} has no {MANIFEST}: not an output directory of `polymodal lumina pretokenize`")
    manifest = json.loads(manifest_file.read_text())
    expected_sha, splits = manifest_sha256(manifest), manifest["splits"]
    records = _rank_records(root)
    other_splits = sorted({s for (_, s) in records} - {splits})
    if other_splits:
        raise RecordError(f"{root} mixes rank records of --splits {other_splits} with the manifest's {splits}")
    missing = [r for r in range(splits) if (r, splits) not in records]
    unfinished = [r for r in range(splits) if (r, splits) in records and not records[r, splits]["complete"]]
    if missing or unfinished:
        problems = [f"ranks {missing} of {splits} have no record"] if missing else []
        problems += [f"ranks {unfinished} of {splits} have not finished"] if unfinished else []
        raise RecordError(f"{root}: {' and '.join(problems)}; run them (again) before concatenating")
    shards, errors, seen = [], Counter(), np.zeros(0, dtype=np.int64)
    for rank in range(splits):
        record = records[rank, splits]
        if record["manifest_sha256"] != expected_sha:
            raise RecordError(f"rank {rank}'s record was made with other settings than {manifest_file}")
        errors.update(record["errors"])
        for entry in record["shards"]:
            path = root / entry["path"]
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                raise RecordError(f"shard {path} is missing or changed since rank {rank} recorded it")
            item_index = MappedShard(path).item_index
            if len(item_index) and (item_index % splits != rank).any():
                raise RecordError(f"shard {path} holds items outside rank {rank}'s partition")
            seen = np.concatenate([seen, item_index])
            shards.append({**entry, "path": _relative(path, Path(save_path).parent)})
    tokenizers = {  # where the tokenizers the manifest names are, seen from the merged record
        name: _relative(root / entry["path"], Path(save_path).parent)
        for name, entry in manifest["tokenizers"].items()
        if "path" in entry
    }
    values, counts = np.unique(seen, return_counts=True)
    if (counts > 1).any():
        raise RecordError(f"input items {values[counts > 1][:10].tolist()} appear more than once; refusing duplicates")
    merged = {
        "format": FORMAT,
        "version": VERSION,
        "manifest": manifest,
        "manifest_sha256": expected_sha,
        "shards": [{k: s[k] for k in ("path", "items", "tokens", "sha256")} for s in shards],
        "tokenizers": tokenizers,
        "items": int(len(seen)),
        "tokens": int(sum(s["tokens"] for s in shards)),
        "errors": dict(sorted(errors.items())),
    }
    _write(Path(save_path), _dump(merged))
    return merged


def _rank_records(root: Path) -> dict[tuple[int, int], dict[str, Any]]:
    records = {}
    for path in sorted(root.iterdir()):
        match = _RANK_RECORD.match(path.name)
        if match:
            records[int(match[1]), int(match[2])] = json.loads(path.read_text())
    return records


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when one contains the other's files (the usual case), else absolute."""
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


class RecordSet:
    """The items of a merged ``record.json``: token ids and label masks by global item number, memory-mapped.

    ``lengths[i]`` is item ``i``'s token count and ``input_index[i]`` its position in the input file; items are
    numbered shard by shard in record order.
    """

    def __init__(self, record_path: str | Path) -> None:
        self.path = Path(record_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"record file not found: {self.path}")
        try:
            record = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"{self.path} is not a record file: {error}") from error
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise RecordError(
                f"{self.path} is not a polymodal record file (make one with `polymodal lumina concat-records`)"
            )
        if record.get("version") != VERSION:
            raise RecordError(f"{self.path} has record format version {record.get('version')}, expected {VERSION}")
        self.manifest: dict[str, Any] = record["manifest"]
        self._tokenizers: dict[str, str] = record.get("tokenizers", {})
        self.layout = VocabularyLayout.from_dict(self.manifest["layout"])
        self._shards = [MappedShard(self._resolve(s["path"])) for s in record["shards"]]
        lengths = [shard.lengths for shard in self._shards]
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        inputs = [shard.item_index for shard in self._shards]
        self.input_index = np.concatenate(inputs).astype(np.int64) if inputs else np.zeros(0, dtype=np.int64)
        self._starts = list(itertools.accumulate((len(shard) for shard in self._shards), initial=0))

    def _resolve(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.path.parent / candidate

    @property
    def tokenizer_hashes(self) -> dict[str, str]:
        return {name: entry["sha256"] for name, entry in self.manifest["tokenizers"].items()}

    def tokenizer_paths(self) -> dict[str, Path]:
        """The copies of the tokenizers the records were made with (``text``: BPE JSON, ``image``: an export)."""
        return {name: self._resolve(path) for name, path in self._tokenizers.items()}

    def __len__(self) -> int:
        return self._starts[-1]

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and bool label mask of item ``index``."""
        if not 0 <= index < self._starts[-1]:
            raise IndexError(f"item {index} of a record set of {len(self)}")
        shard = bisect.bisect_right(self._starts, index) - 1
        tokens, labels = self._shards[shard].item(index - self._starts[shard])
        return tokens.astype(np.int64), labels
