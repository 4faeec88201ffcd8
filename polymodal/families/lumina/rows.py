"""Rows of whole items: packed several to a row of ``seq_len`` tokens, or one to a row sorted by length.

Neither ever splits or truncates an item: the caller leaves out items longer than ``seq_len``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

PACK_WINDOW = 512
"""Items packed together: best-fit decreasing over 512 shuffled items of ~100-600 tokens fills rows of 1-2k tokens
to ~99% (only each window's last rows are part-empty), and keeps a row's items from one random stretch of the data."""


@dataclass(frozen=True)
class Rows:
    """Rows of global item ids, stored flat: row ``r`` holds ``items[offsets[r]:offsets[r + 1]]``. Indexing with an
    int gives that row's items, with a slice the rows it covers (a :class:`Rows`)."""

    items: np.ndarray
    offsets: np.ndarray

    @classmethod
    def one_per_row(cls, items: np.ndarray) -> Rows:
        return cls(np.asarray(items, dtype=np.int64), np.arange(len(items) + 1, dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        items = np.concatenate([np.zeros(0, np.int64), *(part.items for part in parts)])
        counts = np.concatenate([np.zeros(0, np.int64), *(np.diff(part.offsets) for part in parts)])
        return cls(items, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, key: int | slice) -> np.ndarray | Rows:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("rows are sliced with step 1 only")
            stop = max(start, stop)
            offsets = self.offsets[start : stop + 1]
            return Rows(self.items[offsets[0] : offsets[-1]], offsets - offsets[0])
        if not -len(self) <= key < len(self):
            raise IndexError(f"row {key} of {len(self)}")
        key %= len(self)
        return self.items[self.offsets[key] : self.offsets[key + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.items[begin:end] for begin, end in zip(self.offsets[:-1], self.offsets[1:], strict=True))

    def take(self, rows: np.ndarray) -> Rows:
        """The given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, counts = self.offsets[rows], np.diff(self.offsets)[rows]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        index = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
        return Rows(self.items[index], offsets)

    def tokens(self, lengths: np.ndarray) -> np.ndarray:
        """Tokens of each row, given every item's length."""
        per_item = np.concatenate([[0], np.cumsum(lengths[self.items])])
        return per_item[self.offsets[1:]] - per_item[self.offsets[:-1]]


def pack_rows(items: np.ndarray, lengths: np.ndarray, seq_len: int, window: int = PACK_WINDOW) -> Rows:
    """Whole items packed into rows of at most ``seq_len`` tokens: best-fit decreasing within each run of ``window``
    consecutive items (each item goes to the fullest row it still fits, longest items first)."""
    if len(items) and lengths[items].max() > seq_len:
        raise ValueError(f"an item of {lengths[items].max()} tokens does not fit a row of {seq_len}")
    rows: list[list[int]] = []
    for start in range(0, len(items), window):
        chunk = items[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        first_row = len(rows)
        space_left: list[tuple[int, int]] = []  # (free tokens, row) of the window's rows, ascending
        for item, length in zip(chunk.tolist(), lengths[chunk].tolist(), strict=True):
            at = bisect.bisect_left(space_left, (length, first_row))
            if at == len(space_left):
                row, space = len(rows), seq_len
                rows.append([])
            else:
                space, row = space_left.pop(at)
            rows[row].append(item)
            if space > length:
                bisect.insort(space_left, (space - length, row))
    counts = np.array([len(row) for row in rows], dtype=np.int64)
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(counts.sum()))
    return Rows(flat, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def bucket_rows(items: np.ndarray, lengths: np.ndarray, window: int) -> Rows:
    """One item per row, sorted by length within each run of ``window`` consecutive items, so that consecutive rows
    (a batch) need little padding while the windows keep the order random."""
    items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((lengths[items], np.arange(len(items)) // window))
    return Rows.one_per_row(items[order])
