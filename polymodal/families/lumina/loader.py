"""Batches of whole Lumina items: the exactly resumable training loader over an :class:`EpochPlan`, and validation
batches.

A batch is a dict of LongTensors ``[B, L]``, ``L = seq_len`` in ``pack`` mode and the batch's longest row in
``bucket`` mode:

* ``input_ids`` — each row's items one after the other, then pad ids;
* ``target_ids`` — the next token where it is in the same item and labelled a training target, else -100: so the
  last token of every item, the tokens before unlabelled ones (prompts, user turns) and padding have -100;
* ``document_ids`` — the item's number within its row (0, 1, ...), -1 on padding: attention joins equal ids only;
* ``position_ids`` — the position within the item, restarting at 0 for every item (0 on padding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from polymodal.data.order import EpochCursor, EpochCursorLoader, rank_rows
from polymodal.families.lumina.data_config import RecordSets
from polymodal.families.lumina.plan import EpochPlan
from polymodal.families.lumina.rows import Rows

Batch = dict[str, torch.Tensor]
IGNORE_INDEX = -100
PAD_DOCUMENT = -1


def make_batch(records: RecordSets, rows: Sequence[np.ndarray], length: int | None, pad_id: int) -> Batch:
    """The batch of ``rows`` (global item ids of ``records``), ``length`` tokens wide (None: the longest row)."""
    if length is None:
        length = max(int(records.lengths[row].sum()) for row in rows)
    shape = (len(rows), length)
    inputs, targets = np.full(shape, pad_id, np.int64), np.full(shape, IGNORE_INDEX, np.int64)
    documents, positions = np.full(shape, PAD_DOCUMENT, np.int64), np.zeros(shape, np.int64)
    for r, row in enumerate(rows):
        start = 0
        for document, item in enumerate(row):
            tokens, labels = records.item(int(item))
            end = start + len(tokens)
            inputs[r, start:end] = tokens
            targets[r, start : end - 1] = np.where(labels[1:], tokens[1:], IGNORE_INDEX)
            documents[r, start:end] = document
            positions[r, start:end] = np.arange(len(tokens))
            start = end
    fields = {"input_ids": inputs, "target_ids": targets, "document_ids": documents, "position_ids": positions}
    return {name: torch.from_numpy(array) for name, array in fields.items()}


class LuminaLoader(EpochCursorLoader):
    """Infinite data-parallel loader of the rows of an :class:`EpochPlan`, whose position is two integers.

    Global batch ``k`` of an epoch is rows ``[k*G, (k+1)*G)`` of the plan, ``G = batch_size * dp_world``, and rank
    ``r`` takes rows ``[r*B, (r+1)*B)`` of it. The plan depends only on ``(seed, epoch)`` and settings fixed for the
    run, so resuming from :meth:`state_dict` is O(1) and exact, also on another number of ranks as long as
    ``batch_size * dp_world`` is unchanged.
    """

    def __init__(
        self, records: RecordSets, plan: EpochPlan, batch_size: int, dp_rank: int = 0, dp_world: int = 1
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dp_world < 1 or not 0 <= dp_rank < dp_world:
            raise ValueError(f"need 0 <= dp_rank < dp_world, got dp_rank={dp_rank}, dp_world={dp_world}")
        if plan.global_batch != batch_size * dp_world:
            raise ValueError(f"the plan is for global batches of {plan.global_batch}, not {batch_size} x {dp_world}")
        self.records = records
        self.plan = plan
        self.batch_size = batch_size
        self.dp_rank = dp_rank
        self.dp_world = dp_world
        self.global_batch = plan.global_batch
        self.row_length = plan.seq_len if plan.mode == "pack" else None
        if len(plan.epoch_order(0)) < self.global_batch:
            size = f"batch_size {batch_size} x dp_world {dp_world}"
            if plan.group_by_type:
                size += f" x batches_per_step {plan.batches_per_step}, for some type"
            raise ValueError(
                f"the {plan.visited_count(0)} items of epoch 0 do not fill {plan.unit} rows of {plan.mode} mode "
                f"({size}); use more data or smaller batches"
            )
        self.cursor = EpochCursor(plan, self.global_batch)  # epochs differ a little: packing and copies vary

    def __iter__(self) -> LuminaLoader:
        return self

    def __next__(self) -> Batch:
        epoch, batch = self.cursor.take()
        rows = rank_rows(self.plan, epoch, batch, self.batch_size, self.dp_rank, self.dp_world)
        return make_batch(self.records, rows, self.row_length, self.records.layout.pad)

    def _settings(self) -> dict[str, Any]:
        return {**self.plan.settings(), "data": self.records.fingerprint()}

    def state_dict(self) -> dict[str, Any]:
        """Small JSON-able position (the next batch is global batch ``batch_in_epoch`` of ``epoch``) and what the
        order depends on: seed, seq_len, mode, global batch, grouping, and fingerprints of the sets and items."""
        return {**self.cursor.state(), **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the last batch taken by the loader (of any dp_world) that saved ``state``."""
        self.cursor.restore(state, self._settings(), "rows", self.batch_size, self.dp_world)


def eval_batches(
    records: RecordSets, rows: Rows, batch_size: int, length: int | None, max_batches: int | None
) -> Iterator[Batch]:
    """Batches of ``batch_size`` consecutive ``rows`` (the last may be smaller), at most ``max_batches`` (None: all)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")
    starts = range(0, len(rows), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    # A generator expression, so the checks above run at call time rather than on the first next().
    return (make_batch(records, rows[s : s + batch_size], length, records.layout.pad) for s in starts)
