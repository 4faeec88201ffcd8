import itertools
import json

import numpy as np
import pytest
import torch

from polymodal.data.text.packed import PackedSequenceLoader, eval_batches, make_batch
from polymodal.data.text.tokens import TokenCorpus

FIELDS = ("input_ids", "target_ids", "document_ids", "position_ids")

# docs: [10 11 12 EOS] [20 21 EOS] [30 EOS] [40 41 42 43 44 EOS]
HAND = TokenCorpus(
    tokens=np.array([10, 11, 12, 2, 20, 21, 2, 30, 2, 40, 41, 42, 43, 44, 2]),
    doc_ids=np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3]),
)


def random_corpus(num_tokens: int = 2000, seed: int = 0) -> TokenCorpus:
    rng = np.random.default_rng(seed)
    doc_ids = np.cumsum(rng.random(num_tokens) < 0.08)
    return TokenCorpus(tokens=rng.integers(3, 500, num_tokens), doc_ids=doc_ids)


def naive_window(corpus: TokenCorpus, w: int, seq_len: int) -> dict[str, list[int]]:
    """Plain-loop reference for one window."""
    start = w * seq_len
    inputs, targets, docs, positions = [], [], [], []
    pos = 0
    for t in range(seq_len):
        i = start + t
        if t > 0 and corpus.doc_ids[i] != corpus.doc_ids[i - 1]:
            pos = 0
        inputs.append(int(corpus.tokens[i]))
        targets.append(int(corpus.tokens[i + 1]))
        docs.append(int(corpus.doc_ids[i]))
        positions.append(pos)
        pos += 1
    return {"input_ids": inputs, "target_ids": targets, "document_ids": docs, "position_ids": positions}


def rows(batch: dict[str, torch.Tensor]) -> list[tuple]:
    return [tuple(tuple(batch[f][r].tolist()) for f in FIELDS) for r in range(len(batch["input_ids"]))]


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_make_batch_hand_computed():
    batch = make_batch(HAND, np.array([0, 1, 2]), seq_len=4)
    assert all(batch[f].dtype == torch.long and batch[f].shape == (3, 4) for f in FIELDS)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 2], [20, 21, 2, 30], [2, 40, 41, 42]]
    assert batch["target_ids"].tolist() == [[11, 12, 2, 20], [21, 2, 30, 2], [40, 41, 42, 43]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 0], [1, 1, 1, 2], [2, 3, 3, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 0, 1, 2]]


def test_make_batch_matches_naive_reference():
    corpus = random_corpus()
    seq_len = 16
    window_ids = np.array([0, 7, 3, 100, (len(corpus) - 1) // seq_len - 1])
    batch = make_batch(corpus, window_ids, seq_len)
    for row, w in enumerate(window_ids):
        expected = naive_window(corpus, int(w), seq_len)
        for f in FIELDS:
            assert batch[f][row].tolist() == expected[f], (f, w)


def test_loader_properties_and_epoch_coverage():
    corpus = random_corpus()
    loader = PackedSequenceLoader(corpus, seq_len=16, batch_size=5, seed=3)
    assert loader.num_windows == 1999 // 16 == 124
    assert loader.tokens_per_batch == 80
    assert iter(loader) is loader
    seen = [tuple(b["input_ids"][r].tolist()) for b in take(loader, loader.batches_per_epoch) for r in range(5)]
    assert len(seen) == 120 == len(set(seen))  # 24 full batches, 4 leftover windows dropped
    all_windows = {tuple(make_batch(corpus, np.array([w]), 16)["input_ids"][0].tolist()) for w in range(124)}
    assert set(seen) <= all_windows


def test_epoch_wrap_draws_a_new_permutation():
    corpus = random_corpus()
    loader = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=0)
    per_epoch = loader.batches_per_epoch
    epoch0 = [rows(b) for b in take(loader, per_epoch)]
    epoch1 = [rows(b) for b in take(loader, per_epoch)]
    assert loader.state_dict()["epoch"] == 1
    assert epoch0 != epoch1
    assert sorted(itertools.chain(*epoch0)) == sorted(
        itertools.chain(*epoch1)
    )  # 124 windows, global batch 4: none dropped
    next(loader)
    assert loader.state_dict()["epoch"] == 2


def test_no_shuffle_is_sequential():
    corpus = random_corpus()
    loader = PackedSequenceLoader(corpus, seq_len=16, batch_size=3, shuffle=False)
    for k in range(3):
        expected = make_batch(corpus, np.arange(3 * k, 3 * k + 3), 16)
        assert rows(next(loader)) == rows(expected)


def test_order_is_independent_of_rank_split():
    corpus = random_corpus()
    single = PackedSequenceLoader(corpus, seq_len=16, batch_size=6, seed=7)
    ranks = [PackedSequenceLoader(corpus, seq_len=16, batch_size=3, seed=7, dp_rank=r, dp_world=2) for r in (0, 1)]
    for _ in range(2 * single.batches_per_epoch + 3):  # crosses two epoch boundaries
        assert rows(next(single)) == rows(next(ranks[0])) + rows(next(ranks[1]))


def test_resume_continues_exactly():
    corpus = random_corpus()
    uninterrupted = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1)
    expected = [rows(b) for b in take(uninterrupted, 40)]

    first = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1)
    take(first, 29)  # the 11 resumed batches cross the 31-batch epoch boundary
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    assert [rows(b) for b in take(resumed, 11)] == expected[29:]

    at_epoch_end = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1)
    take(at_epoch_end, at_epoch_end.batches_per_epoch)
    again = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1)
    again.load_state_dict(at_epoch_end.state_dict())
    assert rows(next(again)) == expected[again.batches_per_epoch]


def test_resume_from_two_ranks_onto_one():
    corpus = random_corpus()
    ranks = [PackedSequenceLoader(corpus, seq_len=16, batch_size=2, seed=5, dp_rank=r, dp_world=2) for r in (0, 1)]
    for loader in ranks:
        take(loader, 10)
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict()
    single = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=5)
    single.load_state_dict(state)
    for _ in range(5):
        assert rows(next(single)) == rows(next(ranks[0])) + rows(next(ranks[1]))


def test_resume_mismatch_errors():
    corpus = random_corpus()
    state = PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seq_len=16 but this loader has seq_len=8"):
        PackedSequenceLoader(corpus, seq_len=8, batch_size=4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="global batch is 4 windows but this loader's is 6"):
        PackedSequenceLoader(corpus, seq_len=16, batch_size=3, seed=1, dp_world=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_windows"):
        PackedSequenceLoader(random_corpus(3000), seq_len=16, batch_size=4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys \\['epoch'\\]"):
        PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1).load_state_dict(
            {k: v for k, v in state.items() if k != "epoch"}
        )
    with pytest.raises(ValueError, match="invalid loader position"):
        PackedSequenceLoader(corpus, seq_len=16, batch_size=4, seed=1).load_state_dict({**state, "batch_in_epoch": 99})


def test_constructor_errors():
    with pytest.raises(ValueError, match="corpus too short"):
        PackedSequenceLoader(HAND, seq_len=4, batch_size=2, dp_world=2)
    with pytest.raises(ValueError, match="dp_rank"):
        PackedSequenceLoader(HAND, seq_len=4, batch_size=1, dp_rank=1, dp_world=1)
    with pytest.raises(ValueError, match="batch_size"):
        PackedSequenceLoader(HAND, seq_len=4, batch_size=0)
    with pytest.raises(ValueError, match="seq_len"):
        PackedSequenceLoader(HAND, seq_len=0, batch_size=1)


def test_eval_batches_sequential_with_partial_last_batch():
    corpus = random_corpus()
    batches = list(eval_batches(corpus, seq_len=16, batch_size=50, max_batches=None))
    assert [len(b["input_ids"]) for b in batches] == [50, 50, 24]
    assert list(itertools.chain(*(rows(b) for b in batches))) == rows(make_batch(corpus, np.arange(124), 16))
    capped = list(eval_batches(corpus, seq_len=16, batch_size=50, max_batches=2))
    assert [rows(b) for b in capped] == [rows(b) for b in batches[:2]]
    assert [rows(b) for b in eval_batches(corpus, 16, 50, 2)] == [rows(b) for b in capped]  # deterministic


def test_eval_batches_errors_at_call_time():
    with pytest.raises(ValueError, match="too short"):
        eval_batches(HAND, seq_len=20, batch_size=1)
    with pytest.raises(ValueError, match="max_batches"):
        eval_batches(HAND, seq_len=4, batch_size=1, max_batches=-1)
