"""Packed fixed-length LM sequences with document ids, and an exactly resumable loader.

The token stream of a :class:`TokenCorpus` is cut into ``num_windows = (len(tokens) - 1) // seq_len``
overlapping-by-one windows of ``seq_len + 1`` tokens; window ``w`` is
``tokens[w * seq_len : w * seq_len + seq_len + 1]``. Its first ``seq_len`` tokens are the input and its
last ``seq_len`` the target, so every corpus token except the first is predicted exactly once.

A batch is a dict of LongTensors of shape ``[B, seq_len]``:

* ``input_ids``, ``target_ids``;
* ``document_ids`` — the corpus document index of each input token. Attention may only connect tokens
  with equal ids (a block-diagonal document mask); the values are raw corpus indices, not renumbered.
* ``position_ids`` — the position of each input token within its document, restarting at 0 at every
  document start inside the window. A document that began in an earlier window restarts at 0 at the
  window start, because the model never sees its earlier tokens in this sample.

Targets are the plain next token everywhere, including across a document boundary: the EOS that ends a
document predicts the first token of the next one. Only that one position per boundary predicts across
documents (it learns the distribution of document starts), which is the standard packed-LM objective;
no target is masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from polymodal.data.order import EpochCursor, EpochCursorLoader, EpochOrder, GlobalOrder, rank_rows
from polymodal.data.text.tokens import TokenCorpus

Batch = dict[str, torch.Tensor]


def count_windows(corpus: TokenCorpus, seq_len: int) -> int:
    """Number of full ``seq_len + 1`` windows the corpus stream yields."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return max(len(corpus) - 1, 0) // seq_len


def make_batch(corpus: TokenCorpus, window_ids: np.ndarray, seq_len: int) -> Batch:
    """Gather the given windows into a batch dict (see module docstring for the fields)."""
    starts = np.asarray(window_ids, dtype=np.int64)[:, None] * seq_len
    index = starts + np.arange(seq_len + 1, dtype=np.int64)
    tokens = corpus.tokens[index].astype(np.int64)
    docs = corpus.doc_ids[index[:, :-1]].astype(np.int64)
    steps = np.arange(seq_len, dtype=np.int64)
    is_doc_start = np.ones_like(docs, dtype=bool)
    is_doc_start[:, 1:] = docs[:, 1:] != docs[:, :-1]
    last_doc_start = np.maximum.accumulate(np.where(is_doc_start, steps, 0), axis=1)
    return {
        "input_ids": torch.from_numpy(tokens[:, :-1].copy()),
        "target_ids": torch.from_numpy(tokens[:, 1:].copy()),
        "document_ids": torch.from_numpy(docs),
        "position_ids": torch.from_numpy(steps - last_doc_start),
    }


class PackedSequenceLoader(EpochCursorLoader):
    """Infinite, shuffled, data-parallel loader over packed windows whose position is two integers.

    Epoch ``e`` visits the windows in the order ``numpy.random.default_rng([seed, e]).permutation``
    (``arange`` when ``shuffle`` is False). Global batch ``k`` of an epoch is the next
    ``batch_size * dp_world`` windows of that order, and rank ``r`` takes rows
    ``r * batch_size : (r + 1) * batch_size`` of it. The windows left at the end of an epoch that do
    not fill a global batch are dropped for that epoch (a different permutation drops different ones).

    Because the order depends only on ``(seed, epoch, global batch size)``, resuming from
    :meth:`state_dict` is O(1) and exact, and the same global order is kept when the number of ranks
    changes as long as ``batch_size * dp_world`` does not. ``order`` replaces that permutation with any
    :class:`~polymodal.data.order.EpochOrder` of window ids.
    """

    def __init__(
        self,
        corpus: TokenCorpus,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world: int = 1,
        shuffle: bool = True,
        order: EpochOrder | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dp_world < 1 or not 0 <= dp_rank < dp_world:
            raise ValueError(f"need 0 <= dp_rank < dp_world, got dp_rank={dp_rank}, dp_world={dp_world}")
        self.corpus = corpus
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_world = dp_world
        self.shuffle = shuffle
        self.global_batch = batch_size * dp_world
        self._num_windows = count_windows(corpus, seq_len)
        if self._num_windows < self.global_batch:
            raise ValueError(
                f"corpus too short: {len(corpus)} tokens give {self._num_windows} windows of seq_len={seq_len}, "
                f"fewer than one global batch of {self.global_batch} (batch_size={batch_size} x dp_world={dp_world})"
            )
        self.order = order if order is not None else GlobalOrder(self._num_windows, seed, shuffle)
        self.cursor = EpochCursor(self.order, self.global_batch)

    @property
    def num_windows(self) -> int:
        return self._num_windows

    @property
    def tokens_per_batch(self) -> int:
        """Input tokens per batch on this rank."""
        return self.batch_size * self.seq_len

    def __iter__(self) -> PackedSequenceLoader:
        return self

    def __next__(self) -> Batch:
        epoch, batch = self.cursor.take()
        window_ids = rank_rows(self.order, epoch, batch, self.batch_size, self.dp_rank, self.dp_world)
        return make_batch(self.corpus, window_ids, self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        """Small JSON-able position: the next batch is global batch ``batch_in_epoch`` of ``epoch``."""
        return {
            **self.cursor.state(),
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch": self.global_batch,
            "num_windows": self._num_windows,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the last batch taken by the loader that produced ``state``."""
        expected = {
            name: self.state_dict()[name] for name in ("seed", "seq_len", "global_batch", "num_windows", "shuffle")
        }
        self.cursor.restore(state, expected, "windows", self.batch_size, self.dp_world)


def eval_batches(corpus: TokenCorpus, seq_len: int, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
    """Deterministic evaluation batches: windows ``0, 1, 2, ...`` in order, ``batch_size`` per batch.

    Every window is covered once, so the last batch may be smaller than ``batch_size``. ``max_batches``
    caps the number of batches (None = all).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")
    num_windows = count_windows(corpus, seq_len)
    if num_windows == 0:
        raise ValueError(f"corpus too short for evaluation: {len(corpus)} tokens give no window of seq_len={seq_len}")
    starts = range(0, num_windows, batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    # A generator expression, so the checks above run at call time rather than on the first next().
    return (make_batch(corpus, np.arange(s, min(s + batch_size, num_windows)), seq_len) for s in starts)
