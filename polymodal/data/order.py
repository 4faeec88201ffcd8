"""The global sample order every resumable loader follows.

An order lists the rows of every epoch in visiting order (:class:`EpochOrder`). Global batch ``k`` of an epoch is
rows ``[k*G, (k+1)*G)`` of it, ``G = batch_size * dp_world``, and rank ``r`` takes rows ``[r*B, (r+1)*B)`` of that
(:func:`rank_rows`); the rows after the last full global batch are dropped for that epoch. The order is a pure
function of ``(seed, epoch, G)``: a loader's state is just ``(epoch, batch)``, and a resume may change ``dp_world``
as long as ``G`` is unchanged.

The default, :class:`GlobalOrder`, visits sample ids in the order ``numpy.random.default_rng([seed, e]).permutation(N)``
in epoch ``e`` (``arange(N)`` without shuffling). A loader keeps its position in an :class:`EpochCursor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class EpochOrder(Protocol):
    """The order of an epoch: what a resumable loader asks of its order.

    ``epoch_order(epoch)`` is the epoch's rows in visiting order (a sample id each for :class:`GlobalOrder`; a
    row may also be several items packed together). It must not depend on anything but the epoch and settings
    fixed for the run (seed, global batch size), so that a position ``(epoch, batch_in_epoch)`` names one batch.
    """

    def epoch_order(self, epoch: int) -> Sequence[Any]: ...


def batches_in_epoch(order: EpochOrder, epoch: int, global_batch: int) -> int:
    """Full global batches of ``epoch`` (ValueError when it has fewer rows than one)."""
    rows = len(order.epoch_order(epoch))
    if rows < global_batch:
        raise ValueError(f"epoch {epoch} has {rows} rows, fewer than one global batch of {global_batch}")
    return rows // global_batch


def rank_rows(
    order: EpochOrder, epoch: int, batch_in_epoch: int, batch_size: int, dp_rank: int, dp_world: int
) -> Sequence[Any]:
    """The rows rank ``dp_rank`` gets in global batch ``batch_in_epoch`` of ``epoch``."""
    start = (batch_in_epoch * dp_world + dp_rank) * batch_size
    return order.epoch_order(epoch)[start : start + batch_size]


class GlobalOrder:
    """The sample order of every epoch, shared by all ranks (see module docstring)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self._cached_epoch = -1
        self._cached_order = np.empty(0, dtype=np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample ids of ``epoch`` in visiting order (the last one is cached)."""
        if epoch != self._cached_epoch:
            if self.shuffle:
                self._cached_order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            else:
                self._cached_order = np.arange(self.num_samples, dtype=np.int64)
            self._cached_epoch = epoch
        return self._cached_order

    def batches_per_epoch(self, global_batch: int) -> int:
        return self.num_samples // global_batch

    def rank_ids(self, epoch: int, batch_in_epoch: int, batch_size: int, dp_rank: int, dp_world: int) -> np.ndarray:
        """Sample ids that rank ``dp_rank`` gets in global batch ``batch_in_epoch`` of ``epoch``."""
        return np.asarray(rank_rows(self, epoch, batch_in_epoch, batch_size, dp_rank, dp_world))


def checked_resume_position(
    state: Mapping[str, Any],
    expected: Mapping[str, Any],
    last_batch_in_epoch: int | Callable[[int], int],
    unit: str,
    batch_size: int,
    dp_world: int,
) -> tuple[int, int]:
    """Check a saved loader ``state`` against this loader's ``expected`` settings (which must include
    ``global_batch``); return the ``(epoch, batch_in_epoch)`` to continue from. ``last_batch_in_epoch`` is the
    largest valid ``batch_in_epoch``, or a function of the epoch when epochs differ in length."""
    required = ["epoch", "batch_in_epoch", *expected]
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"loader state is missing keys {missing}; expected {required}")
    for name, value in expected.items():
        if name == "global_batch" and state[name] != value:
            raise ValueError(
                f"cannot resume: the saved global batch is {state[name]} {unit} but this loader's is {value} "
                f"(global_batch = batch_size {batch_size} x dp_world {dp_world}). The order is only preserved when "
                "batch_size * dp_world is unchanged; adjust batch_size to match"
            )
        if state[name] != value:
            raise ValueError(
                f"cannot resume: loader state has {name}={state[name]!r} but this loader has {name}={value!r}; "
                "the order would differ"
            )
    epoch, batch = state["epoch"], state["batch_in_epoch"]
    if epoch < 0:
        raise ValueError(f"invalid loader position epoch={epoch}, batch_in_epoch={batch} (epochs count from 0)")
    last = last_batch_in_epoch(epoch) if callable(last_batch_in_epoch) else last_batch_in_epoch
    if not 0 <= batch <= last:
        raise ValueError(
            f"invalid loader position epoch={epoch}, batch_in_epoch={batch} (valid batch positions are 0..{last})"
        )
    return int(epoch), int(batch)


@dataclass
class EpochCursor:
    """Where a loader is in ``order``: the next global batch is batch ``batch_in_epoch`` of ``epoch``.

    :meth:`take` returns that position and moves past it, into the next epoch once the epoch's batches are used up.
    The roll-over happens when the next batch is taken, so the position after an epoch's last batch is
    ``(epoch, batches_in_epoch)``; with ``eager_rollover`` it happens at once and that position is ``(epoch + 1, 0)``.
    """

    order: EpochOrder
    global_batch: int
    epoch: int = 0
    batch_in_epoch: int = 0
    eager_rollover: bool = False
    _counted: tuple[int, int] = field(default=(-1, 0), init=False, repr=False, compare=False)  # (epoch, its batches)

    def batches_in_epoch(self, epoch: int | None = None) -> int:
        """Full global batches of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._counted[0] != epoch:
            self._counted = (epoch, batches_in_epoch(self.order, epoch, self.global_batch))
        return self._counted[1]

    def _roll_over_if_done(self) -> None:
        if self.batch_in_epoch == self.batches_in_epoch():
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def take(self) -> tuple[int, int]:
        """The ``(epoch, batch_in_epoch)`` of the next global batch; the cursor moves on to the one after it."""
        self._roll_over_if_done()
        position = (self.epoch, self.batch_in_epoch)
        self.batch_in_epoch += 1
        if self.eager_rollover:
            self._roll_over_if_done()
        return position

    def state(self) -> dict[str, int]:
        """The position as the first keys of a loader's state dict."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def restore(
        self, state: Mapping[str, Any], expected: Mapping[str, Any], unit: str, batch_size: int, dp_world: int
    ) -> None:
        """Move to the position of a saved ``state`` after checking it with :func:`checked_resume_position`."""
        last_offset = 1 if self.eager_rollover else 0
        self.epoch, self.batch_in_epoch = checked_resume_position(
            state,
            expected,
            lambda epoch: self.batches_in_epoch(epoch) - last_offset,
            unit,
            batch_size,
            dp_world,
        )


def _cursor_field(name: str) -> property:
    return property(lambda self: getattr(self.cursor, name), lambda self, value: setattr(self.cursor, name, value))


class EpochCursorLoader:
    """The position attributes of a loader that keeps an :class:`EpochCursor` in ``cursor``: ``epoch`` and
    ``batch_in_epoch`` are the cursor's."""

    cursor: EpochCursor
    epoch = _cursor_field("epoch")
    batch_in_epoch = _cursor_field("batch_in_epoch")

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in the current epoch (they may differ between epochs: see :class:`EpochOrder`)."""
        return self.cursor.batches_in_epoch()
