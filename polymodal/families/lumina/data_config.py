"""The data config (Lumina-mGPT's ``--data_config``): which record sets to train on, how much of each per epoch, and
which ones may share an optimizer step.

.. code-block:: yaml

    META:
      - path: t2i/record.json   # a record.json of `polymodal lumina concat-records`; relative to this file's folder
        ratio: 0.4              # per epoch: 0.4 = a fresh random 40% of the set, 2.5 = two copies + a random half
        type: t2i               # with group_by_type, a step only holds items of one type (default "default")

Every set must share one vocabulary layout and the same tokenizers (:class:`RecordSets` checks), since their token
ids meet in one model.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.families.lumina.records import RecordError, RecordSet
from polymodal.families.lumina.vocabulary import VocabularyLayout

ENTRY_KEYS = ("path", "ratio", "type")
DEFAULT_TYPE = "default"


@dataclass(frozen=True)
class SetEntry:
    """One ``META`` entry; ``name`` is the path as written (it names the set in messages and fingerprints)."""

    name: str
    path: Path
    ratio: float = 1.0
    type: str = DEFAULT_TYPE


def load_data_config(path: str | Path) -> list[SetEntry]:
    """The ``META`` entries of a data config file (ConfigError naming the key or entry that is wrong). A record file
    (``.json``) stands for a data config of that one set."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"data config {source} not found")
    if source.suffix == ".json":
        return [SetEntry(name=str(path), path=source)]
    try:
        tree = yaml.safe_load(source.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"data config {source} is not valid YAML: {' '.join(str(error).split())}") from error
    unknown = [str(key) for key in tree if key != "META"] if isinstance(tree, dict) else []
    if unknown:
        hint = did_you_mean(unknown[0].upper(), ["META"])
        raise ConfigError(f"data config {source}: unknown key '{unknown[0]}'{hint} (it lists record sets under META)")
    meta = tree.get("META") if isinstance(tree, dict) else None
    if not isinstance(meta, list) or not meta:
        raise ConfigError(
            f"data config {source}: META must be a non-empty list of record sets (`META: [{{path: ...}}]`), "
            f"got {meta!r}"
        )
    return [_entry(source, index, entry) for index, entry in enumerate(meta)]


def _entry(source: Path, index: int, entry: Any) -> SetEntry:
    where = f"data config {source}: META[{index}]"
    if not isinstance(entry, dict) or "path" not in entry:
        raise ConfigError(f"{where} must be a mapping with a `path`, got {entry!r}")
    for key in entry:
        if key not in ENTRY_KEYS:
            raise ConfigError(f"{where} has unknown key '{key}'{did_you_mean(str(key).lower(), ENTRY_KEYS)}")
    name, ratio, kind = entry["path"], entry.get("ratio", 1.0), entry.get("type", DEFAULT_TYPE)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} path must be a file path, got {name!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise ConfigError(f"{where} ratio must be a number > 0 (1 = every item once per epoch), got {ratio!r}")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where} type must be a non-empty string, got {kind!r}")
    return SetEntry(name, source.parent / name, float(ratio), kind)


class RecordSets:
    """The record sets of some entries, checked to share one vocabulary layout and tokenizers, with their items
    numbered globally: set after set, ``offsets[s]`` is the first id of set ``s``."""

    def __init__(self, entries: Sequence[SetEntry], sets: Sequence[RecordSet]) -> None:
        self.entries = list(entries)
        self.sets = list(sets)
        for entry, record_set in zip(self.entries[1:], self.sets[1:], strict=True):
            _check_compatible(self.entries[0], self.sets[0], entry, record_set)
        self.layout: VocabularyLayout = self.sets[0].layout
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])
        self._starts = self.offsets.tolist()  # Python ints: item() is on the loader's hot path
        self.lengths = np.concatenate([s.lengths for s in self.sets]).astype(np.int64)

    @classmethod
    def open(cls, entries: Sequence[SetEntry]) -> RecordSets:
        return cls(entries, [_open(entry) for entry in entries])

    def __add__(self, other: RecordSets) -> RecordSets:
        """Both lists of sets (checked alike); this one's item ids stay the same."""
        return RecordSets([*self.entries, *other.entries], [*self.sets, *other.sets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_items(self, index: int) -> np.ndarray:
        """The global ids of set ``index``'s items."""
        return np.arange(self.offsets[index], self.offsets[index + 1], dtype=np.int64)

    def item(self, item_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and bool label mask of global item ``item_id``."""
        index = bisect.bisect_right(self._starts, item_id) - 1
        return self.sets[index].item(item_id - self._starts[index])

    def fingerprint(self) -> str:
        """What the sets are, for a loader state: paths as written, ratios, types and item counts."""
        described = [[e.name, e.ratio, e.type, len(s)] for e, s in zip(self.entries, self.sets, strict=True)]
        return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def _open(entry: SetEntry) -> RecordSet:
    try:
        return RecordSet(entry.path)
    except (FileNotFoundError, RecordError) as error:
        raise ConfigError(f"record set {entry.name}: {error}") from error


def _check_compatible(first: SetEntry, first_set: RecordSet, entry: SetEntry, record_set: RecordSet) -> None:
    if record_set.layout != first_set.layout:
        raise ConfigError(
            f"record set {entry.name} uses another vocabulary layout than {first.name} "
            f"({record_set.layout.describe_difference(first_set.layout)}); every set must be tokenized alike"
        )
    mine, theirs = record_set.tokenizer_hashes, first_set.tokenizer_hashes
    differ = sorted(name for name in {*mine, *theirs} if mine.get(name) != theirs.get(name))
    if differ:
        details = ", ".join(f"{name} {mine.get(name)} != {theirs.get(name)}" for name in differ)
        raise ConfigError(
            f"record set {entry.name} was made with other tokenizers than {first.name} (sha256 of {details}); "
            "every set must be tokenized alike"
        )
