"""The engine loaders follow any EpochOrder, also one whose epochs differ in length, and resume in it exactly."""

import json

import numpy as np
import pytest
import torch

from polymodal.data.multimodal.loader import ResumableLoader
from polymodal.data.order import EpochCursor, EpochOrder, GlobalOrder, batches_in_epoch, rank_rows
from polymodal.data.text.packed import PackedSequenceLoader
from polymodal.data.text.tokens import TokenCorpus

SIZE = 13


class EveryOtherBackwards:
    """Even epochs visit ids ``0..SIZE-1``; odd ones every other id backwards (7 of 13): epochs differ in length."""

    def epoch_order(self, epoch: int) -> np.ndarray:
        ids = np.arange(SIZE)
        return ids if epoch % 2 == 0 else ids[::-2]


class Ids:
    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, sample_id: int) -> dict:
        return {"value": torch.tensor([sample_id])}


def expected_ids(batch_size: int, epochs: int) -> list[list[int]]:
    order, ids = EveryOtherBackwards(), []
    for epoch in range(epochs):
        rows = order.epoch_order(epoch)
        ids += [rows[k : k + batch_size].tolist() for k in range(0, len(rows) - batch_size + 1, batch_size)]
    return ids


def test_global_order_is_an_epoch_order():
    order: EpochOrder = GlobalOrder(10, seed=5)
    assert batches_in_epoch(order, 2, global_batch=4) == 2
    assert rank_rows(order, 2, 1, 2, 1, 2).tolist() == order.epoch_order(2)[6:8].tolist()
    with pytest.raises(ValueError, match="epoch 0 has 10 rows, fewer than one global batch of 11"):
        batches_in_epoch(order, 0, 11)


def test_resumable_loader_follows_and_resumes_a_custom_order():
    expected = expected_ids(3, 4)  # 4 + 2 batches per pair of epochs
    loader = ResumableLoader(Ids(), 3, seed=0, order=EveryOtherBackwards())
    assert [next(loader)["sample_id"].tolist() for _ in range(len(expected))] == expected
    first = ResumableLoader(Ids(), 3, seed=0, order=EveryOtherBackwards())
    for _ in range(5):  # into the short epoch 1
        next(first)
    resumed = ResumableLoader(Ids(), 3, seed=0, order=EveryOtherBackwards())
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.batches_per_epoch == 2
    assert [next(resumed)["sample_id"].tolist() for _ in range(4)] == expected[5:9]


def test_packed_loader_follows_and_resumes_a_custom_order():
    corpus = TokenCorpus(tokens=np.arange(SIZE * 4 + 1), doc_ids=np.zeros(SIZE * 4 + 1, dtype=np.int64))
    first_tokens = [[4 * w for w in ids] for ids in expected_ids(2, 4)]  # window w starts with token 4w
    loader = PackedSequenceLoader(corpus, seq_len=4, batch_size=2, order=EveryOtherBackwards())
    assert [next(loader)["input_ids"][:, 0].tolist() for _ in range(len(first_tokens))] == first_tokens
    first = PackedSequenceLoader(corpus, seq_len=4, batch_size=2, order=EveryOtherBackwards())
    for _ in range(7):  # 6 batches in epoch 0, 3 in epoch 1
        next(first)
    resumed = PackedSequenceLoader(corpus, seq_len=4, batch_size=2, order=EveryOtherBackwards())
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed)["input_ids"][:, 0].tolist() for _ in range(4)] == first_tokens[7:11]
    with pytest.raises(ValueError, match=r"valid batch positions are 0..3"):
        resumed.load_state_dict({**first.state_dict(), "batch_in_epoch": 4})


def test_epoch_cursor_takes_positions_across_epochs_of_different_lengths():
    late = EpochCursor(EveryOtherBackwards(), global_batch=3)  # 4 batches in even epochs, 2 in odd ones
    assert [late.take() for _ in range(7)] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0)]
    eager = EpochCursor(EveryOtherBackwards(), global_batch=3, eager_rollover=True)
    assert [eager.take() for _ in range(7)] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0)]
    # after an epoch's last batch, the late cursor stays at its end and the eager one starts the next epoch
    late, eager = EpochCursor(EveryOtherBackwards(), 3), EpochCursor(EveryOtherBackwards(), 3, eager_rollover=True)
    for _ in range(4):
        late.take(), eager.take()
    assert late.state() == {"epoch": 0, "batch_in_epoch": 4} and eager.state() == {"epoch": 1, "batch_in_epoch": 0}
    assert late.batches_in_epoch() == 4 and eager.batches_in_epoch() == 2


def test_epoch_cursor_restores_checked_positions():
    expected = {"seed": 3, "global_batch": 3}
    late = EpochCursor(EveryOtherBackwards(), 3)
    late.restore({"epoch": 1, "batch_in_epoch": 2, **expected}, expected, "samples", batch_size=3, dp_world=1)
    assert (late.epoch, late.batch_in_epoch) == (1, 2) and late.take() == (2, 0)
    eager = EpochCursor(EveryOtherBackwards(), 3, eager_rollover=True)
    with pytest.raises(ValueError, match=r"valid batch positions are 0..1"):  # (1, 2) is (2, 0) when rolling eagerly
        eager.restore({"epoch": 1, "batch_in_epoch": 2, **expected}, expected, "samples", batch_size=3, dp_world=1)
    with pytest.raises(ValueError, match="the saved global batch is 6 samples but this loader's is 3"):
        late.restore({"epoch": 0, "batch_in_epoch": 0, "seed": 3, "global_batch": 6}, expected, "samples", 3, 1)
    assert late.state() == {"epoch": 2, "batch_in_epoch": 1}  # a rejected state leaves the cursor where it was


def test_loaders_show_their_cursor_position():
    corpus = TokenCorpus(tokens=np.arange(SIZE * 4 + 1), doc_ids=np.zeros(SIZE * 4 + 1, dtype=np.int64))
    loader = PackedSequenceLoader(corpus, seq_len=4, batch_size=2, order=EveryOtherBackwards())
    for _ in range(7):
        next(loader)
    assert (loader.epoch, loader.batch_in_epoch, loader.batches_per_epoch) == (1, 1, 3)
    loader.epoch, loader.batch_in_epoch = 2, 5  # the attributes write the cursor's position
    assert loader.cursor.state() == {"epoch": 2, "batch_in_epoch": 5} and loader.batches_per_epoch == 6
