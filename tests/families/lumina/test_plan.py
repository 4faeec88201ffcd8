import logging
from collections import Counter

import numpy as np
import pytest

from polymodal.families.lumina.data import LuminaData
from polymodal.families.lumina.plan import EpochPlan, PlanSet
from polymodal.families.lumina.rows import Rows, bucket_rows, pack_rows

VOCAB = 768


def lumina_data(config, **options) -> LuminaData:
    settings = {"seq_len": 64, "batch_size": 2, "vocab_size": VOCAB, "seed": 3, **options}
    return LuminaData(str(config), **settings)


def set_of(data: LuminaData, items: np.ndarray) -> np.ndarray:
    return np.searchsorted(data.records.offsets, items, side="right") - 1


@pytest.fixture
def three_sets(record_set, data_config):
    rng = np.random.default_rng(0)
    for name in ("half", "double", "once"):
        record_set(name, rng.integers(4, 30, 40), seed=len(name))
    return data_config(
        "META:\n  - path: half/record.json\n    ratio: 0.5\n    type: t2i\n"
        "  - path: double/record.json\n    ratio: 2.0\n    type: chat\n"
        "  - path: once/record.json\n    type: t2i\n"
    )


def test_rows_index_slice_take_and_concat():
    rows = Rows(np.array([7, 8, 9, 4, 5, 6]), np.array([0, 2, 3, 3, 6]))
    assert len(rows) == 4 and rows[0].tolist() == [7, 8] and rows[-1].tolist() == [4, 5, 6] and len(rows[2]) == 0
    assert [row.tolist() for row in rows[1:4]] == [[9], [], [4, 5, 6]] and len(rows[3:1]) == 0
    assert [row.tolist() for row in rows.take(np.array([3, 0, 3]))] == [[4, 5, 6], [7, 8], [4, 5, 6]]
    assert [row.tolist() for row in Rows.concat([rows[:1], Rows.one_per_row(np.array([1, 2]))])] == [[7, 8], [1], [2]]
    assert rows.tokens(np.arange(10)).tolist() == [15, 9, 0, 15]
    with pytest.raises(IndexError):
        rows[4]


def test_pack_and_bucket_rows_keep_every_item_whole():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 50, 300)
    items = rng.permutation(300)
    packed = pack_rows(items, lengths, seq_len=64, window=50)
    assert sorted(packed.items.tolist()) == list(range(300)) and packed.tokens(lengths).max() <= 64
    bucketed = bucket_rows(items, lengths, window=100)
    windows = [sorted(items[w : w + 100].tolist(), key=lambda i: lengths[i]) for w in range(0, 300, 100)]
    assert bucketed.items.tolist() == sum(windows, []) and len(bucketed) == 300
    with pytest.raises(ValueError, match="an item of 80 tokens does not fit a row of 64"):
        pack_rows(np.array([0]), np.array([80]), seq_len=64)


def test_ratios_visit_the_right_counts_with_a_new_subset_every_epoch(three_sets):
    data = lumina_data(three_sets)
    half, double, once = (data.records.set_items(s) for s in range(3))
    subsets = []
    for epoch in range(3):
        visited = [Counter(data.plan.visited(epoch, s).tolist()) for s in range(3)]
        assert sum(visited[0].values()) == 20 == len(visited[0]) and set(visited[0]) <= set(half.tolist())
        assert visited[1] == Counter({item: 2 for item in double.tolist()})
        assert visited[2] == Counter(once.tolist())
        subsets.append(frozenset(visited[0]))
        rows = data.plan.epoch_order(epoch)
        assert Counter(rows.items.tolist()) <= visited[0] + visited[1] + visited[2]  # each copy at most once
        assert data.plan.visited_count(epoch) - len(rows.items) < data.plan.unit * 64 // 4  # only a partial batch
        whole_rows = EpochPlan(data.plan.sets, data.records.lengths, 64, global_batch=1, seed=3)  # drops no row
        assert Counter(whole_rows.epoch_order(epoch).items.tolist()) == visited[0] + visited[1] + visited[2]
    assert len(set(subsets)) == 3


def test_fractional_upsampling_adds_a_random_share(record_set, data_config):
    record_set("a", [10] * 40)
    data = lumina_data(data_config("META:\n  - path: a/record.json\n    ratio: 2.25\n"))
    counts = Counter(data.plan.visited(0, 0).tolist())
    assert sorted(Counter(counts.values()).items()) == [(2, 30), (3, 10)]


def test_fill_is_high_on_items_of_100_to_600_tokens(record_set, data_config):
    record_set("a", np.random.default_rng(2).integers(100, 601, 1500))
    config = data_config("META:\n  - path: a/record.json\n")
    for seq_len in (2048, 1024):
        data = lumina_data(config, seq_len=seq_len, batch_size=4)
        info = data.info()
        assert info["fill_percent"] >= 95, info
        assert data.plan.epoch_order(0).tokens(data.records.lengths).max() <= seq_len
    assert info["items_per_epoch"] == 1500 and info["too_long_items"] == 0


def test_order_depends_only_on_seed_epoch_and_global_batch(three_sets):
    def rows(data: LuminaData, epochs) -> dict:
        return {epoch: [row.tolist() for row in data.plan.epoch_order(epoch)] for epoch in epochs}

    reference = rows(lumina_data(three_sets), [0, 1, 2])
    assert rows(lumina_data(three_sets, batch_size=1, dp_world=2, dp_rank=1, eval_batch_size=5), [2, 0, 1]) == reference
    assert rows(lumina_data(three_sets, seed=4), [0]) != {0: reference[0]}
    assert rows(lumina_data(three_sets, batch_size=4), [0]) != {0: reference[0]}
    assert reference[0] != reference[1]


def test_type_grouping_holds_within_every_global_batch_and_step(three_sets):
    types = np.array(["t2i", "chat", "t2i"])
    for mode in ("pack", "bucket"):
        data = lumina_data(three_sets, group_by_type=True, batches_per_step=2, mode=mode, seq_len=32)
        for epoch in range(2):
            rows = data.plan.epoch_order(epoch)
            row_types = [set(types[set_of(data, row)]) for row in rows]
            assert data.plan.unit == 4  # G = 2 rows, 2 global batches a step
            steps = [set().union(*row_types[k : k + 4]) for k in range(0, len(rows), 4)]
            assert all(len(kinds) == 1 for kinds in steps) and {"t2i", "chat"} == set().union(*steps)
        ungrouped = lumina_data(three_sets, mode=mode, seq_len=32)
        rows = ungrouped.plan.epoch_order(0)
        assert any(len(set(types[set_of(ungrouped, rows[k : k + 2].items)])) > 1 for k in range(0, len(rows), 2))


def test_bucket_batches_hold_one_item_per_row_sorted_and_padded_to_the_longest(three_sets):
    data = lumina_data(three_sets, mode="bucket", batch_size=4, seq_len=32)
    rows = data.plan.epoch_order(0)
    assert all(len(row) == 1 for row in rows)
    lengths = rows.tokens(data.records.lengths)
    for k in range(data.train.batches_per_epoch):
        assert np.all(np.diff(lengths[4 * k : 4 * k + 4]) >= 0)  # one run of a window sorted by length
        batch = next(data.train)
        assert batch["input_ids"].shape == (4, lengths[4 * k : 4 * k + 4].max())
        assert (batch["document_ids"] == 0).sum(dim=1).tolist() == lengths[4 * k : 4 * k + 4].tolist()
    assert data.info()["fill_percent"] >= 80


def test_too_long_items_are_left_out_counted_and_logged_once(record_set, data_config, caplog):
    record_set("a", [10, 70, 20, 65, 64, 30, 10, 12])
    with caplog.at_level(logging.WARNING):
        data = lumina_data(data_config("META:\n  - path: a/record.json\n"), batch_size=1)
    warnings = [r.getMessage() for r in caplog.records if "longer than seq_len" in r.getMessage()]
    assert warnings == [
        "left out 2 train and 0 val items longer than seq_len=64 (never truncated); train per set: a/record.json 2"
    ]
    assert data.info()["too_long_items"] == 2 and data.info()["train_items"] == 6
    for epoch in range(3):
        assert data.records.lengths[data.plan.epoch_order(epoch).items].max() <= 64


def test_plan_refuses_bad_settings():
    sets = [PlanSet(np.arange(4), 1.0, "default")]
    with pytest.raises(ValueError, match="unknown mode 'pad'"):
        EpochPlan(sets, np.ones(4, np.int64), 8, 2, 0, mode="pad")
    with pytest.raises(ValueError, match="need seq_len, global_batch, batches_per_step >= 1"):
        EpochPlan(sets, np.ones(4, np.int64), 8, 0, 0)
