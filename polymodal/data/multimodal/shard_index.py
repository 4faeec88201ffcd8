"""Random-access index over 4M-layout shards: one tar per modality per shard, the same keys in each.

Each tar is scanned once through an fsspec file object: ``tarfile`` reads the 512-byte headers and seeks over
the member data, so only headers are fetched. For every member the index records ``(offset_data, size)``;
a sample is then read with one range request per modality.

A tar cut short (a partly written or partly copied shard) keeps its complete members: members whose data
runs past the end of the file, and everything after a damaged header, are dropped, and the tar is listed in
:attr:`ShardIndex.truncated`.

Modalities are aligned by key, not by position (upstream 4M zips the tar streams and so raises on any
divergence). The samples of a shard are the union of its modalities' keys, in this order: the first
modality's keys in its tar order; a key only later modalities have follows the key that precedes it in the
first modality that has it (or leads the shard if it comes first there). When one modality holds a subset of
another's keys in the same order -- samples dropped by ``pretokenize-4m``, a truncated tar -- the order is
therefore the full tar order whichever modality is listed first. A key some tar lacks is still a sample; its
member there is ``None`` and reading it is a counted, skipped ``missing_member``.

Two cases are configuration errors rather than bad samples:

* a modality whose tar has keys but shares none with the other modalities of its shard (wrong folder, wrong
  shard numbering);
* more than :data:`MAX_MISMATCHED_KEY_FRACTION` of a shard's keys missing from some complete (not truncated)
  tar: that is modalities written from different sample sets, not a few dropped samples. Keys a truncated tar
  lost are not counted, since truncation is already reported per tar.

The index is cached as JSON under a name derived from the index format, the URLs and their sizes and versions
(mtime locally, ETag on S3), so rebuilding for unchanged shards is a single file read and a cache written in
another format is never read.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from polymodal.files import atomic_output, exclusive_lock

logger = logging.getLogger(__name__)

INDEX_FORMAT = 2  # 2: members aligned with the shard's keys, None where a tar lacks a key
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks close every well-formed tar
# Read-ahead while scanning headers: covers several small members per request without buffering big shards.
SCAN_BLOCK_SIZE = 1 << 20
MAX_MISMATCHED_KEY_FRACTION = 0.5
EXAMPLE_KEYS = 3  # keys quoted per modality in error messages

Member = tuple[str, int, int]  # (extension, offset, size)


@dataclass(frozen=True)
class MemberLocation:
    """Where one member's bytes are: ``url[offset : offset + size]``; ``extension`` is e.g. ``rgb.png``."""

    url: str
    extension: str
    offset: int
    size: int


@dataclass
class TarScan:
    """The regular-file members of one tar in archive order, and why the scan stopped early (if it did)."""

    keys: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)  # one per key
    truncated: str | None = None


def split_member_name(url: str, name: str) -> tuple[str, str]:
    """``dir/00000001.rgb.png`` -> (``dir/00000001``, ``rgb.png``): the key ends at the basename's first dot."""
    folder, base = posixpath.split(name)
    stem, dot, extension = base.partition(".")
    if not dot or not stem or not extension:
        raise ValueError(f"shard {url}: member {name!r} is not named <key>.<extension>")
    return posixpath.join(folder, stem), extension


def _archive_end_is_intact(file: Any, offset: int) -> bool:
    file.seek(offset)
    return file.read(END_OF_ARCHIVE) == bytes(END_OF_ARCHIVE)


def scan_tar(fs: AbstractFileSystem, url: str, file_size: int) -> TarScan:
    """Read the member table of one tar (headers only)."""
    scan = TarScan()
    if file_size < tarfile.BLOCKSIZE:
        scan.truncated = f"file is {file_size} bytes, shorter than one tar header"
        return scan
    seen: set[str] = set()
    with fs.open(url, "rb", block_size=SCAN_BLOCK_SIZE) as file:
        try:
            archive = tarfile.open(fileobj=file, mode="r:")
        except tarfile.ReadError as error:
            raise ValueError(f"shard {url} is not a readable tar file: {error}") from error
        while True:
            try:
                info = archive.next()
            except tarfile.ReadError as error:
                scan.truncated = f"unreadable after {len(scan.keys)} members: {error}"
                break
            if info is None:
                if not _archive_end_is_intact(file, archive.offset):
                    scan.truncated = f"no intact end-of-archive marker at byte {archive.offset}"
                break
            if not info.isfile():
                continue
            if info.offset_data + info.size > file_size:
                scan.truncated = f"member {info.name!r} ends at byte {info.offset_data + info.size} of {file_size}"
                break
            key, extension = split_member_name(url, info.name)
            if key in seen:
                raise ValueError(f"shard {url}: key {key!r} appears in more than one member (second: {info.name!r})")
            seen.add(key)
            scan.keys.append(key)
            scan.members.append((extension, info.offset_data, info.size))
    return scan


def merge_key_orders(orders: list[list[str]]) -> list[str]:
    """Every key of ``orders`` once: ``orders[0]`` in order, each key new in a later order placed right after the
    key preceding it there (see the module docstring)."""
    known = set(orders[0])
    followers: dict[str | None, list[str]] = {}  # key -> keys inserted right after it; None: at the start
    for keys in orders[1:]:
        previous = None
        for key in keys:
            if key not in known:
                known.add(key)
                followers.setdefault(previous, []).append(key)
            previous = key
    merged: list[str] = []
    pending = list(reversed(followers.get(None, []) + orders[0]))
    while pending:
        key = pending.pop()
        merged.append(key)
        pending.extend(reversed(followers.get(key, [])))
    return merged


def _first_keys(scans: dict[str, TarScan]) -> str:
    return "; ".join(f"{m}: {scan.keys[:EXAMPLE_KEYS]}" for m, scan in scans.items())


def check_modalities_share_keys(shard_name: str, scans: dict[str, TarScan]) -> None:
    """Raise if a modality's tar has keys but none in common with the other modalities of the shard."""
    key_sets = {m: set(scan.keys) for m, scan in scans.items()}
    for modality, keys in key_sets.items():
        others = [m for m in key_sets if m != modality]
        other_keys = set().union(*(key_sets[m] for m in others))
        if keys and other_keys and keys.isdisjoint(other_keys):
            raise ValueError(
                f"{shard_name}: modality {modality!r} shares no key with {others} (first keys {_first_keys(scans)}); "
                "is a folder or the shard numbering wrong?"
            )


def align_members(shard_name: str, scans: dict[str, TarScan]) -> tuple[list[str], dict[str, list[Member | None]]]:
    """The shard's sample keys and, per modality, the member of each key (None where its tar lacks the key).

    Raises for the configuration errors listed in the module docstring; logs the keys some tar lacks.
    """
    check_modalities_share_keys(shard_name, scans)
    keys = merge_key_orders([scan.keys for scan in scans.values()])
    members = {}
    for modality, scan in scans.items():
        by_key = dict(zip(scan.keys, scan.members, strict=True))
        members[modality] = [by_key.get(key) for key in keys]
    lacking = {m: sum(member is None for member in members[m]) for m in scans if scans[m].truncated is None}
    mismatched = [key for i, key in enumerate(keys) if any(members[m][i] is None for m in lacking)]
    if not mismatched:
        return keys, members
    counts = ", ".join(f"{m} lacks {n}" for m, n in lacking.items() if n)
    if len(mismatched) > MAX_MISMATCHED_KEY_FRACTION * len(keys):
        raise ValueError(
            f"{shard_name}: {len(mismatched)} of {len(keys)} keys are missing from a complete tar ({counts}; "
            f"first keys {_first_keys(scans)}); more than {MAX_MISMATCHED_KEY_FRACTION:.0%} means the modalities "
            "were written from different samples"
        )
    logger.warning(
        "%s: %d of %d keys are missing from a complete tar (%s, e.g. %s); their samples are skipped as missing members",
        shard_name,
        len(mismatched),
        len(keys),
        counts,
        mismatched[:EXAMPLE_KEYS],
    )
    return keys, members


@dataclass
class IndexedShard:
    """One shard: its URL per modality, its sample keys, and per modality the member of each key (or None)."""

    urls: dict[str, str]
    keys: list[str]
    members: dict[str, list[Member | None]]

    def __post_init__(self) -> None:
        self.positions = {key: position for position, key in enumerate(self.keys)}


class ShardIndex:
    """Sample id -> (shard, key) -> member location, over all shards of a 4M-layout data set."""

    def __init__(self, shards: list[IndexedShard], truncated: dict[str, str]) -> None:
        self.shards = shards
        self.truncated = truncated
        self._ends = []
        total = 0
        for shard in shards:
            total += len(shard.keys)
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def locate(self, sample_id: int) -> tuple[int, str]:
        """The shard number and key of a global sample id (shards in pattern order, keys in shard order)."""
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample id {sample_id} out of range for {len(self)} samples")
        shard = bisect.bisect_right(self._ends, sample_id)
        start = self._ends[shard - 1] if shard else 0
        return shard, self.shards[shard].keys[sample_id - start]

    def member(self, shard: int, modality: str, key: str) -> MemberLocation | None:
        """Where ``key``'s member of ``modality`` is, or None if that tar lacks it (truncated or left out)."""
        entry = self.shards[shard]
        if modality not in entry.urls:
            raise ValueError(f"modality {modality!r} is not indexed; indexed: {list(entry.urls)}")
        member = entry.members[modality][entry.positions[key]]
        if member is None:
            return None
        extension, offset, size = member
        return MemberLocation(entry.urls[modality], extension, offset, size)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "truncated": self.truncated,
            "shards": [{"urls": s.urls, "keys": s.keys, "members": s.members} for s in self.shards],
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ShardIndex:
        if payload.get("format") != INDEX_FORMAT:
            raise ValueError(f"shard index format {payload.get('format')!r}, expected {INDEX_FORMAT}")
        shards = []
        for s in payload["shards"]:
            members = {m: [None if e is None else tuple(e) for e in entries] for m, entries in s["members"].items()}
            if set(members) != set(s["urls"]) or any(len(entries) != len(s["keys"]) for entries in members.values()):
                raise ValueError(f"shard index entry for {s['urls']} does not give one member slot per key")
            shards.append(IndexedShard(urls=s["urls"], keys=s["keys"], members=members))
        return cls(shards, payload["truncated"])

    @classmethod
    def scan(cls, urls_by_modality: dict[str, list[str]], fs: AbstractFileSystem, sizes: dict[str, int]) -> ShardIndex:
        """Build the index by reading every tar's headers (no cache)."""
        shards, truncated = [], {}
        for shard_number, urls in enumerate(zip(*urls_by_modality.values(), strict=True)):
            urls_of_shard = dict(zip(urls_by_modality, urls, strict=True))
            scans = {m: scan_tar(fs, url, sizes[url]) for m, url in urls_of_shard.items()}
            for modality, scan in scans.items():
                if scan.truncated is not None:
                    url = urls_of_shard[modality]
                    truncated[url] = scan.truncated
                    logger.warning(
                        "truncated shard %s: %s; indexed its %d complete members", url, scan.truncated, len(scan.keys)
                    )
            shard_name = f"shard {shard_number} ({', '.join(urls_of_shard.values())})"
            shards.append(IndexedShard(urls_of_shard, *align_members(shard_name, scans)))
        return cls(shards, truncated)

    @classmethod
    def build(
        cls,
        urls_by_modality: dict[str, list[str]],
        fs: AbstractFileSystem,
        cache_dir: str | Path | None = None,
    ) -> ShardIndex:
        """The index of these shards, from ``cache_dir`` when the shards are unchanged since it was cached."""
        counts = {m: len(urls) for m, urls in urls_by_modality.items()}
        if not counts or len(set(counts.values())) != 1 or not next(iter(counts.values())):
            raise ValueError(f"every modality needs the same, non-zero number of shards; got {counts}")
        versions = {}
        for modality, urls in urls_by_modality.items():
            for url in urls:
                try:
                    info = fs.info(url)
                except FileNotFoundError as error:
                    raise FileNotFoundError(f"shard {url} of modality {modality!r} does not exist") from error
                version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
                versions[url] = (int(info["size"]), str(version))
        sizes = {url: size for url, (size, _) in versions.items()}
        if cache_dir is None:
            return cls.scan(urls_by_modality, fs, sizes)
        fingerprint = json.dumps([INDEX_FORMAT, urls_by_modality, versions], sort_keys=True)
        cache_file = Path(cache_dir) / f"shard-index-{hashlib.sha256(fingerprint.encode()).hexdigest()[:24]}.json"
        with exclusive_lock(cache_file):
            if cache_file.exists():
                try:
                    return cls.from_json(json.loads(cache_file.read_text()))
                except (ValueError, KeyError, TypeError) as error:
                    logger.warning("ignoring unreadable shard index cache %s (%s); rebuilding", cache_file, error)
            index = cls.scan(urls_by_modality, fs, sizes)
            with atomic_output(cache_file) as tmp:
                tmp.write_text(json.dumps(index.to_json()))
        return index
