"""The epoch plan: which items an epoch visits and how they form rows, a pure function of ``(seed, epoch)`` and the
settings of a run (sets, ``seq_len``, mode, global batch size ``G``, type grouping).

1. Sampling. Set ``s`` of ratio ``r`` contributes ``floor(r)`` copies of every eligible item plus a random
   ``floor(n * (r - floor(r)))`` of its ``n`` eligible items, drawn without replacement from
   ``numpy.random.default_rng([seed, epoch, s, 1])``: a fresh subset every epoch. (Eligible: in the train split and
   at most ``seq_len`` tokens long; longer items are never truncated, they are left out and counted in
   :attr:`EpochPlan.too_long`.)
2. Grouping. With ``group_by_type`` the sets of one ``type`` form a group, else all sets form one.
3. Rows, per group, after shuffling its items: ``pack`` packs whole items into rows of ``seq_len`` tokens
   (:func:`~polymodal.families.lumina.rows.pack_rows`), then shuffles the rows; ``bucket`` puts one item in each
   row, sorted by length within windows of several units (:func:`~polymodal.families.lumina.rows.bucket_rows`).
4. Units. A group's rows are cut into units of ``G`` rows (``G * batches_per_step`` with ``group_by_type``, so that
   a whole optimizer step holds one type); the rows after its last full unit are dropped for the epoch. The units
   of all groups are shuffled together.

The plan is the Lumina loader's :class:`~polymodal.data.order.EpochOrder`: :meth:`EpochPlan.epoch_order` is the
epoch's rows in visiting order, global batch ``k`` is rows ``[k*G, (k+1)*G)`` and rank ``r`` takes rows
``[r*B, (r+1)*B)`` of it, as for every loader. Unlike :class:`~polymodal.data.order.GlobalOrder` its rows hold
several items and epochs differ in length, and it is built for one ``G`` (type groups fill whole global batches).

Each random stream is keyed by ``[seed, epoch, index, tag]`` with a non-zero ``tag`` last: numpy draws the same
stream from ``[a, b, 0]`` as from ``[a, b]``, so a trailing index would let set 0 repeat another stream.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polymodal.families.lumina.rows import Rows, bucket_rows, pack_rows

MODES = ("pack", "bucket")
BUCKET_WINDOW_UNITS = 8
"""Bucket mode sorts by length within windows of 8 units: batches of close lengths, yet no two windows alike."""
_SAMPLE, _ROWS, _UNITS = 1, 2, 3  # random stream tags


@dataclass(frozen=True)
class PlanSet:
    """A set as the plan sees it: its train items (global ids), ratio and type."""

    items: np.ndarray
    ratio: float
    type: str


class EpochPlan:
    """The rows of every epoch (see the module docstring); the last epoch planned is cached."""

    def __init__(
        self,
        sets: Sequence[PlanSet],
        lengths: np.ndarray,
        seq_len: int,
        global_batch: int,
        seed: int,
        mode: str = "pack",
        group_by_type: bool = False,
        batches_per_step: int = 1,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if min(seq_len, global_batch, batches_per_step) < 1 or seed < 0:
            raise ValueError(
                f"need seq_len, global_batch, batches_per_step >= 1 and seed >= 0, got {seq_len}, {global_batch}, "
                f"{batches_per_step}, {seed}"
            )
        self.lengths = lengths
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.seed = seed
        self.mode = mode
        self.group_by_type = group_by_type
        self.batches_per_step = batches_per_step if group_by_type else 1  # else steps do not shape the order
        self.unit = global_batch * self.batches_per_step
        fits = [lengths[s.items] <= seq_len for s in sets]
        self.sets = [PlanSet(s.items[fit], s.ratio, s.type) for s, fit in zip(sets, fits, strict=True)]
        self.too_long = [int((~fit).sum()) for fit in fits]
        digest = hashlib.sha256()
        for s in self.sets:
            digest.update(len(s.items).to_bytes(8, "little") + s.items.astype(np.int64).tobytes())
        self._items_hash = digest.hexdigest()[:16]
        self._cached: tuple[int, Rows] | None = None

    def settings(self) -> dict[str, Any]:
        """What the order depends on besides the epoch and the sets' ratios and types, JSON-able; ``items`` hashes
        the ids of the eligible items (which the train split and ``seq_len`` decide)."""
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "mode": self.mode,
            "global_batch": self.global_batch,
            "group_by_type": self.group_by_type,
            "batches_per_step": self.batches_per_step,
            "items": self._items_hash,
        }

    def visited(self, epoch: int, set_index: int) -> np.ndarray:
        """The items set ``set_index`` contributes to ``epoch`` (an item copied ``k`` times appears ``k`` times)."""
        plan_set = self.sets[set_index]
        whole = math.floor(plan_set.ratio)
        count = math.floor(len(plan_set.items) * (plan_set.ratio - whole) + 1e-9)
        rng = np.random.default_rng([self.seed, epoch, set_index, _SAMPLE])
        part = np.sort(rng.choice(len(plan_set.items), count, replace=False))
        return np.concatenate([np.tile(plan_set.items, whole), plan_set.items[part]])

    def visited_count(self, epoch: int) -> int:
        return sum(len(self.visited(epoch, s)) for s in range(len(self.sets)))

    def groups(self) -> list[list[int]]:
        """Set indices by group: one group per type (in order of appearance) with ``group_by_type``, else one."""
        if not self.group_by_type:
            return [list(range(len(self.sets)))]
        types = list(dict.fromkeys(s.type for s in self.sets))
        return [[i for i, s in enumerate(self.sets) if s.type == kind] for kind in types]

    def epoch_order(self, epoch: int) -> Rows:
        """The rows of ``epoch`` in visiting order."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._plan(epoch))
        return self._cached[1]

    def _plan(self, epoch: int) -> Rows:
        parts, unit_starts, first_row = [], [], 0
        for group, members in enumerate(self.groups()):
            rng = np.random.default_rng([self.seed, epoch, group, _ROWS])
            items = rng.permutation(np.concatenate([self.visited(epoch, s) for s in members]))
            if self.mode == "pack":
                rows = pack_rows(items, self.lengths, self.seq_len)
                rows = rows.take(rng.permutation(len(rows)))
            else:
                rows = bucket_rows(items, self.lengths, self.unit * BUCKET_WINDOW_UNITS)
            parts.append(rows)
            unit_starts.append(first_row + self.unit * np.arange(len(rows) // self.unit))
            first_row += len(rows)
        starts = np.random.default_rng([self.seed, epoch, 0, _UNITS]).permutation(np.concatenate(unit_starts))
        return Rows.concat(parts).take((starts[:, None] + np.arange(self.unit)).reshape(-1))
