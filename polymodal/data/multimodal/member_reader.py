"""Reading a tar member's bytes: ``pread`` on a kept-open descriptor for local shards, a range request otherwise.

Opening the shard for every member cost about a quarter of the read time of local shards (the member-read
comparison of ``benchmarks/data_loading.py``). :class:`MemberReader` keeps one descriptor per local shard *per
process*: ``os.pread`` reads at an offset without moving a shared file position, the descriptors are not carried
across a pickle (a DataLoader worker opens its own), and at most ``max_open`` stay open (the least recently used
closes first). Remote filesystems keep fsspec's ``cat_file`` range request: a buffered remote file would fetch whole
blocks.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.core import strip_protocol
from fsspec.implementations.local import LocalFileSystem


class MemberReader:
    """``read(url, offset, size)`` -> the bytes at ``[offset, offset + size)`` of ``url`` on ``fs``."""

    def __init__(self, fs: AbstractFileSystem, max_open: int = 64) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.fs, self.max_open = fs, max_open
        self.local = isinstance(fs, LocalFileSystem)
        self._descriptors: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()

    def read(self, url: str, offset: int, size: int) -> bytes:
        if not self.local:
            return self.fs.cat_file(url, start=offset, end=offset + size)
        chunks, done = [], 0
        descriptor = self._descriptor(url)
        while done < size:  # pread may return fewer bytes than asked; 0 bytes: the file ends here
            chunk = os.pread(descriptor, size - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def _descriptor(self, url: str) -> int:
        if self._pid != os.getpid():  # forked: the inherited descriptors belong to the parent
            self._descriptors.clear()
            self._pid = os.getpid()
        descriptor = self._descriptors.get(url)
        if descriptor is not None:
            self._descriptors.move_to_end(url)
            return descriptor
        descriptor = os.open(strip_protocol(url), os.O_RDONLY)
        self._descriptors[url] = descriptor
        if len(self._descriptors) > self.max_open:
            os.close(self._descriptors.popitem(last=False)[1])
        return descriptor

    def close(self) -> None:
        """Close this process's descriptors (the reader opens them again when it next reads)."""
        if self._pid == os.getpid():
            for descriptor in self._descriptors.values():
                os.close(descriptor)
        self._descriptors.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_descriptors": OrderedDict()}

    def __del__(self) -> None:
        self.close()
