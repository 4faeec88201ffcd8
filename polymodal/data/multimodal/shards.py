"""Map-style dataset over 4M-layout multimodal shards, local or on S3 (any fsspec URL).

``MultimodalShards("root/[rgb,depth,caption]/shard-{00000..00099}.tar")[i]`` is a dict
``{modality: value}`` for global sample ``i`` (shards in pattern order, samples in the key order of
:mod:`polymodal.data.multimodal.shard_index`: tar order when the modalities agree). Only that sample's members
are read, one read per modality (:class:`~polymodal.data.multimodal.member_reader.MemberReader`); values are
decoded as described in :mod:`polymodal.data.multimodal.decode`. A sample that cannot be produced raises
:class:`SampleError` for the loader to count and skip; one whose key some modality's tar lacks raises
``missing_member`` before any of its bytes are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
from torch.utils.data import Dataset

from polymodal import files
from polymodal.data.multimodal.decode import DecodeError, decode_member
from polymodal.data.multimodal.member_reader import MemberReader
from polymodal.data.multimodal.shard_index import MemberLocation, ShardIndex
from polymodal.data.multimodal.shard_patterns import expand_shard_pattern
from polymodal.data.multimodal.skips import SampleError, SkipCounter


def select_modalities(available: list[str], modalities: list[str] | None, rename: dict[str, str]) -> list[str]:
    selected = list(available) if modalities is None else list(modalities)
    unknown = [m for m in selected if m not in available]
    if unknown or not selected:
        raise ValueError(f"modalities {unknown or selected} are not in the shard pattern, which has {available}")
    stray = [m for m in rename if m not in selected]
    if stray:
        raise ValueError(f"rename maps modalities {stray} that are not loaded; loaded: {selected}")
    outputs = [rename.get(m, m) for m in selected]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"rename {rename} gives two modalities the same name: {outputs}")
    return selected


class MultimodalShards(Dataset):
    """Random access to the samples of a 4M shard pattern; ``skips`` starts with the truncated tars found.

    The tar index is cached in ``<cache_dir>/shard_index`` (``cache_dir``: the cache root, default
    :func:`polymodal.files.cache_root`)."""

    def __init__(
        self,
        pattern: str,
        modalities: list[str] | None = None,
        rename: dict[str, str] | None = None,
        cache_dir: str | Path | None = None,
        error_budget: int = 100,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        urls_by_modality = expand_shard_pattern(pattern)
        self.rename = dict(rename or {})
        self.modalities = select_modalities(list(urls_by_modality), modalities, self.rename)
        urls_by_modality = {m: urls_by_modality[m] for m in self.modalities}
        first_url = next(iter(urls_by_modality.values()))[0]
        self.fs, _ = fsspec.core.url_to_fs(first_url, **(storage_options or {}))
        self.index = ShardIndex.build(urls_by_modality, self.fs, files.cache_dir("shard_index", cache_dir))
        self.reader = MemberReader(self.fs)
        self.skips = SkipCounter(error_budget)
        for url, detail in self.index.truncated.items():
            self.skips.add("truncated_tar", f"{url}: {detail}")

    def __len__(self) -> int:
        return len(self.index)

    def locate_members(self, sample_id: int) -> tuple[str, dict[str, MemberLocation]]:
        """The key of a sample and where each loaded modality's member of it is; ``missing_member`` if a tar
        lacks it."""
        shard, key = self.index.locate(sample_id)
        locations = {}
        for modality in self.modalities:
            location = self.index.member(shard, modality, key)
            if location is None:
                url = self.index.shards[shard].urls[modality]
                raise SampleError("missing_member", sample_id, f"{url} has no {modality} member for key {key!r}")
            locations[modality] = location
        return key, locations

    def read_member(self, sample_id: int, modality: str, key: str, location: MemberLocation) -> Any:
        where = f"{location.url} member {key}.{location.extension}"
        try:
            data = self.reader.read(location.url, location.offset, location.size)
        except OSError as error:
            raise SampleError("read_error", sample_id, f"{where}: {error}") from error
        if len(data) != location.size:
            raise SampleError("truncated_member", sample_id, f"{where}: read {len(data)} of {location.size} bytes")
        try:
            return decode_member(modality, location.extension.rsplit(".", 1)[-1], data)
        except DecodeError as error:
            raise SampleError(error.reason, sample_id, f"{where}: {error}") from error

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        key, locations = self.locate_members(sample_id)
        return {self.rename.get(m, m): self.read_member(sample_id, m, key, loc) for m, loc in locations.items()}
