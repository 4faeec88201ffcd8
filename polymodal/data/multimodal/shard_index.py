"""Random-access index over 4M-layout shards: one tar per modality per shard, the same keys in each.

Each tar is scanned once through an fsspec file object: ``tarfile`` reads the 512-byte headers and seeks over
the member data, so only headers are fetched. For every member the index records ``(offset_data, size)``;
a sample is then read with one range request per modality.

A tar cut short (a partly written or partly copied shard) keeps its complete members: members whose data
runs past the end of the file, and everything after a damaged header, are dropped, and the tar is listed in
:attr:`ShardIndex.truncated`. Its keys must then be a prefix of the other modalities' keys; the samples it
lacks surface later as missing members. Apart from that, keys must be identical and identically ordered in
every modality of a shard.

The index is cached as JSON under a name derived from the URLs and their sizes and versions (mtime locally,
ETag on S3), so rebuilding for unchanged shards is a single file read.
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

from polymodal.data.text.atomic_files import atomic_output, exclusive_lock

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks close every well-formed tar
# Read-ahead while scanning headers: covers several small members per request without buffering big shards.
SCAN_BLOCK_SIZE = 1 << 20


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
    members: list[tuple[str, int, int]] = field(default_factory=list)  # (extension, offset, size) per key
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


def check_keys_agree(shard_name: str, scans: dict[str, TarScan]) -> list[str]:
    """The shard's sample keys; raise naming the shard and the first diverging key if the modalities disagree."""
    reference_modality = max(scans, key=lambda m: len(scans[m].keys))
    reference = scans[reference_modality].keys
    for modality, scan in scans.items():
        for position, (key, expected) in enumerate(zip(scan.keys, reference, strict=False)):
            if key != expected:
                raise ValueError(
                    f"{shard_name}: keys diverge at sample {position}: modality {modality!r} has {key!r} "
                    f"but {reference_modality!r} has {expected!r}"
                )
        if len(scan.keys) < len(reference) and scan.truncated is None:
            raise ValueError(
                f"{shard_name}: keys diverge at sample {len(scan.keys)}: modality {modality!r} has no key "
                f"{reference[len(scan.keys)]!r} (it ends after {len(scan.keys)} samples, {reference_modality!r} "
                f"has {len(reference)})"
            )
    return reference


@dataclass
class IndexedShard:
    """One shard: its URL per modality, its sample keys, and per modality the members of a prefix of them."""

    urls: dict[str, str]
    keys: list[str]
    members: dict[str, list[tuple[str, int, int]]]

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
        """The shard number and key of a global sample id (shards in pattern order, keys in tar order)."""
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample id {sample_id} out of range for {len(self)} samples")
        shard = bisect.bisect_right(self._ends, sample_id)
        start = self._ends[shard - 1] if shard else 0
        return shard, self.shards[shard].keys[sample_id - start]

    def member(self, shard: int, modality: str, key: str) -> MemberLocation | None:
        """Where ``key``'s member of ``modality`` is, or None if that tar lacks it (it was truncated)."""
        entry = self.shards[shard]
        if modality not in entry.urls:
            raise ValueError(f"modality {modality!r} is not indexed; indexed: {list(entry.urls)}")
        position = entry.positions[key]
        members = entry.members[modality]
        if position >= len(members):
            return None
        extension, offset, size = members[position]
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
        shards = [
            IndexedShard(
                urls=s["urls"],
                keys=s["keys"],
                members={m: [tuple(entry) for entry in entries] for m, entries in s["members"].items()},
            )
            for s in payload["shards"]
        ]
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
            keys = check_keys_agree(shard_name, scans)
            shards.append(IndexedShard(urls_of_shard, keys, {m: s.members for m, s in scans.items()}))
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
