"""The data object a Lumina config instantiates: record sets of a data config, the training loader over their epoch
plan, validation batches and a summary for the log.

Validation items come from a separate data config (``val_data_config``: every item of its sets once) and/or are
held out of the training sets (``val_fraction``): item ``i`` of the set written ``path`` in the data config is held
out when a hash of ``(path, i)`` falls below the fraction — ``i`` being the item's position in the conversation
file it was pre-tokenized from — so the split is the same on every rank and run, whatever ``--splits`` the records
were made with, and growing a set does not move its old items between train and val.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.data.largest import LargestBatch
from polymodal.data.text.lm_data import LMData
from polymodal.families.lumina.data_config import RecordSets, load_data_config
from polymodal.families.lumina.loader import Batch, LuminaLoader, eval_batches
from polymodal.families.lumina.plan import MODES, EpochPlan, PlanSet
from polymodal.families.lumina.rows import Rows, bucket_rows, pack_rows

log = logging.getLogger(__name__)


def held_out(name: str, input_index: np.ndarray, fraction: float) -> np.ndarray:
    """Which items of the set named ``name`` are held out for validation, given their positions in the input file
    (stable whatever ``--splits`` ordered the records by): the splitmix64 finalizer of (input position + a hash of
    the name), as a number in [0, 1), below ``fraction``."""
    key = np.uint64(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    z = np.asarray(input_index, dtype=np.uint64) + key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


class LuminaData:
    """Training loader (``train``), validation batches and ``info()`` for pre-training on Lumina record sets.

    Args:
        data_config: a data config YAML (:mod:`polymodal.families.lumina.data_config`).
        seq_len: tokens per row; longer items are left out (counted in ``info()``), never truncated.
        batch_size: rows per rank and micro-batch.
        vocab_size: the model's; it must equal the records' vocabulary size.
        mode: ``pack`` (whole items packed into rows of ``seq_len``) or ``bucket`` (one item per row, batches of
            similar lengths padded to their longest); see :mod:`polymodal.families.lumina.plan`.
        group_by_type, batches_per_step: with ``group_by_type``, each run of ``batches_per_step`` global batches
            (set it to the experiment's ``grad_accum_steps``: one optimizer step) holds items of one set type.
        val_data_config, val_fraction: validation sets and/or the fraction of training items held out (module
            docstring); without either, there is no validation data.
        eval_batch_size: rows per validation batch (default ``batch_size``); every rank evaluates the same batches.
        seed, dp_rank, dp_world: injected by the trainer.
    """

    def __init__(
        self,
        data_config: str,
        seq_len: int,
        batch_size: int,
        vocab_size: int,
        mode: str = "pack",
        group_by_type: bool = False,
        batches_per_step: int = 1,
        val_data_config: str | None = None,
        val_fraction: float = 0.0,
        eval_batch_size: int | None = None,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world: int = 1,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"data.mode must be one of {MODES}, got {mode!r}{did_you_mean(mode, MODES)}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.data_config = data_config
        self.seq_len = seq_len
        self.tokens_per_sample = seq_len
        self.vocab_size = vocab_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.records = RecordSets.open(load_data_config(data_config))
        layout = self.records.layout
        if layout.vocab_size != vocab_size:
            raise ConfigError(
                f"the record sets of {data_config} have vocab_size {layout.vocab_size} (text {layout.text_vocab_size}"
                f" + {layout.codebook_size} image codes) but the model's vocab_size is {vocab_size}"
            )
        sets, val_items = [], []
        for index, entry in enumerate(self.records.entries):
            items = self.records.set_items(index)
            held = held_out(entry.name, self.records.sets[index].input_index, val_fraction)
            sets.append(PlanSet(items[~held], entry.ratio, entry.type))
            val_items.append(items[held])
        self.plan = EpochPlan(
            sets, self.records.lengths, seq_len, batch_size * dp_world, seed, mode, group_by_type, batches_per_step
        )
        self.val_records = self.records
        if val_data_config is not None:
            self.val_records = self.records + RecordSets.open(load_data_config(val_data_config))
            val_items.append(np.arange(len(self.records), len(self.val_records), dtype=np.int64))
        self.val_rows, val_too_long = self._validation_rows(np.concatenate(val_items))
        if val_fraction and not len(self.val_rows):
            raise ConfigError(f"data.val_fraction={val_fraction} holds out no item of {data_config}; raise it")
        if sum(self.plan.too_long) or val_too_long:
            per_set = zip(self.records.entries, self.plan.too_long, strict=True)
            log.warning(
                "left out %d train and %d val items longer than seq_len=%d (never truncated); train per set: %s",
                sum(self.plan.too_long),
                val_too_long,
                seq_len,
                ", ".join(f"{entry.name} {count}" for entry, count in per_set if count),
            )
        self.train = LuminaLoader(self.records, self.plan, batch_size, dp_rank, dp_world)

    def _validation_rows(self, items: np.ndarray) -> tuple[Rows, int]:
        """Rows of the validation items that fit (in set order, or by length in bucket mode), and how many do not."""
        lengths = self.val_records.lengths
        fits = items[lengths[items] <= self.seq_len]
        if self.plan.mode == "pack":
            return pack_rows(fits, lengths, self.seq_len), len(items) - len(fits)
        return bucket_rows(fits, lengths, window=max(len(fits), 1)), len(items) - len(fits)

    @classmethod
    def largest_batch(
        cls, seq_len: int, batch_size: int, device: torch.device | str = "cpu", **sets_and_loading: Any
    ) -> LargestBatch:
        """A batch of the largest shape ``train`` yields (``batch_size x seq_len``; bucket batches are at most that
        wide), from the config alone: no record is read. See :mod:`polymodal.data.largest`."""
        return LMData.largest_batch(seq_len, batch_size, device)

    def val_batches(self, max_batches: int | None) -> Iterator[Batch]:
        """The validation batches, the same on every call and rank."""
        if not len(self.val_rows):
            raise ValueError("no validation data: set data.val_data_config or data.val_fraction")
        length = self.seq_len if self.plan.mode == "pack" else None
        return eval_batches(self.val_records, self.val_rows, self.eval_batch_size, length, max_batches)

    def tokenizer_paths(self) -> dict[str, str]:
        """The tokenizers the records were made with (a run carries copies): ``text`` and ``image``."""
        return {name: str(path) for name, path in self.records.sets[0].tokenizer_paths().items()}

    def info(self) -> dict[str, float | int | str]:
        """Epoch 0 of the plan in numbers (later epochs differ a little), skipped items and the sets' ratios."""
        rows = self.plan.epoch_order(0)
        tokens = rows.tokens(self.records.lengths)
        visited = self.plan.visited_count(0)
        if self.plan.mode == "pack":
            room = len(rows) * self.seq_len
        else:  # each rank's batch is as wide as its longest row
            room = int(tokens.reshape(-1, self.train.batch_size).max(axis=1).sum()) * self.train.batch_size
        return {
            "data_config": self.data_config,
            "mode": self.plan.mode,
            "train_items": sum(len(s.items) for s in self.plan.sets),
            "items_per_epoch": visited,
            "dropped_items_per_epoch": visited - len(rows.items),
            "tokens_per_epoch": int(tokens.sum()),
            "batches_per_epoch": len(rows) // self.plan.global_batch,
            "fill_percent": round(100 * float(tokens.sum()) / room, 2),
            "too_long_items": sum(self.plan.too_long),
            "val_items": len(self.val_rows.items),
            "ratios": ", ".join(f"{e.name}: {e.ratio:g}" for e in self.records.entries),
            "vocab_size": self.vocab_size,
        }
