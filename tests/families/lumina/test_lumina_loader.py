import json

import numpy as np
import pytest
import torch

from polymodal.data.order import rank_rows
from polymodal.families.lumina.data import LuminaData, held_out

FIELDS = ("input_ids", "target_ids", "document_ids", "position_ids")
VOCAB = 768


@pytest.fixture
def two_sets(record_set, data_config):
    rng = np.random.default_rng(5)
    record_set("a", rng.integers(3, 40, 60), seed=1)
    record_set("b", rng.integers(3, 65, 30), seed=2, splits=3)
    return data_config("META:\n  - path: a/record.json\n    ratio: 0.7\n  - path: b/record.json\n    ratio: 1.5\n")


def lumina_data(config, **options) -> LuminaData:
    settings = {"seq_len": 64, "batch_size": 2, "vocab_size": VOCAB, "seed": 11, **options}
    return LuminaData(str(config), **settings)


def reference_rows(data: LuminaData, rows, width: int) -> dict[str, list[list[int]]]:
    """The batch fields of ``rows`` by plain loops over each item's tokens and labels."""
    fields = {name: [] for name in FIELDS}
    for row in rows:
        inputs, targets, documents, positions = [], [], [], []
        for document, item in enumerate(row.tolist()):
            index = next(s for s in range(len(data.records.sets)) if item < data.records.offsets[s + 1])
            tokens, labels = data.records.sets[index].item(item - int(data.records.offsets[index]))
            for t in range(len(tokens)):
                inputs.append(int(tokens[t]))
                targets.append(int(tokens[t + 1]) if t + 1 < len(tokens) and labels[t + 1] else -100)
                documents.append(document)
                positions.append(t)
        padding = width - len(inputs)
        for name, values, fill in zip(FIELDS, (inputs, targets, documents, positions), (0, -100, -1, 0), strict=True):
            fields[name].append(values + [fill] * padding)
    return fields


def take(loader, count: int) -> list[dict[str, list]]:
    return [{name: value.tolist() for name, value in next(loader).items()} for _ in range(count)]


@pytest.mark.parametrize("mode", ["pack", "bucket"])
def test_batches_match_a_plain_reference(two_sets, mode):
    data = lumina_data(two_sets, mode=mode, batch_size=3)
    assert data.records.layout.pad == 0
    for k in range(data.train.batches_per_epoch):
        rows = rank_rows(data.plan, 0, k, 3, 0, 1)
        width = 64 if mode == "pack" else int(max(data.records.lengths[row].sum() for row in rows))
        batch = next(data.train)
        assert all(batch[name].dtype == torch.long and batch[name].shape == (3, width) for name in FIELDS)
        assert {name: batch[name].tolist() for name in FIELDS} == reference_rows(data, rows, width)
    targets = batch["target_ids"]
    assert (targets == -100).any() and (targets != -100).any()


def test_global_batches_are_the_same_for_any_rank_split(two_sets):
    single = take(lumina_data(two_sets, batch_size=4).train, 30)  # crosses epoch boundaries
    for batch_size, world in ((2, 2), (1, 4)):
        ranks = [lumina_data(two_sets, batch_size=batch_size, dp_rank=r, dp_world=world).train for r in range(world)]
        per_rank = [take(loader, 30) for loader in ranks]
        for step in range(30):
            assert single[step]["input_ids"] == sum((per_rank[r][step]["input_ids"] for r in range(world)), [])


def test_resume_gives_the_identical_next_batches_across_epoch_boundaries(two_sets):
    uninterrupted = lumina_data(two_sets).train
    per_epoch = uninterrupted.batches_per_epoch
    expected = take(uninterrupted, 3 * per_epoch)
    for taken in (0, 5, per_epoch - 1, per_epoch, per_epoch + 2, 2 * per_epoch):
        first = lumina_data(two_sets).train
        take(first, taken)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = lumina_data(two_sets).train
        resumed.load_state_dict(state)
        assert take(resumed, per_epoch) == expected[taken : taken + per_epoch], taken
    assert set(state) == {
        "epoch", "batch_in_epoch", "seed", "seq_len", "mode", "global_batch", "group_by_type", "batches_per_step",
        "items", "data",
    }  # fmt: skip


def test_resume_refuses_another_order(two_sets, data_config):
    loader = lumina_data(two_sets).train
    take(loader, 3)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="saved global batch is 2 rows but this loader's is 4"):
        lumina_data(two_sets, batch_size=4).train.load_state_dict(state)
    with pytest.raises(ValueError, match="loader state has seed=11 but this loader has seed=12"):
        lumina_data(two_sets, seed=12).train.load_state_dict(state)
    with pytest.raises(ValueError, match="loader state has items=.* the order would differ"):
        lumina_data(two_sets, val_fraction=0.2).train.load_state_dict(state)
    reweighted = data_config(two_sets.read_text().replace("0.7", "0.8"), name="reweighted.yaml")
    with pytest.raises(ValueError, match="loader state has data="):
        lumina_data(reweighted).train.load_state_dict(state)
    with pytest.raises(ValueError, match="invalid loader position"):
        lumina_data(two_sets).train.load_state_dict({**state, "batch_in_epoch": 10_000})


def test_val_fraction_holds_out_items_by_identity(two_sets):
    data = lumina_data(two_sets, val_fraction=0.25, eval_batch_size=3)
    val_items = set(data.val_rows.items.tolist())
    train_items = set(np.concatenate([s.items for s in data.plan.sets]).tolist())
    assert val_items and not val_items & train_items
    assert len(val_items | train_items) == len(data.records)  # every item fits seq_len 64
    expected = sorted(  # by position in the input, whatever the order of the records
        offset + position
        for name, offset, record_set in zip(("a/record.json", "b/record.json"), (0, 60), data.records.sets, strict=True)
        for position in np.flatnonzero(held_out(name, np.arange(len(record_set)), 0.25)[record_set.input_index])
    )
    assert sorted(val_items) == expected
    assert set(lumina_data(two_sets, val_fraction=0.25, seed=0).val_rows.items.tolist()) == val_items
    first = [{n: b[n].tolist() for n in FIELDS} for b in data.val_batches(None)]
    assert first == [{n: b[n].tolist() for n in FIELDS} for b in data.val_batches(None)]
    assert len(first) == -(-len(data.val_rows) // 3) and len(list(data.val_batches(1))) == 1
    tokens = sum(int(data.records.lengths[row].sum()) for row in data.val_rows)
    assert sum((torch.tensor(b["document_ids"]) >= 0).sum().item() for b in first) == tokens
    assert 0.15 < np.mean(held_out("x", np.arange(10_000), 0.25)) < 0.35


def test_the_val_split_does_not_depend_on_how_many_ranks_made_the_records(record_set, data_config):
    held = []
    for splits in (1, 3):
        record_set(f"s{splits}/a", [20] * 40, splits=splits)
        config = data_config("META:\n  - path: a/record.json\n", name=f"s{splits}/data.yaml")
        data = LuminaData(config, seq_len=64, batch_size=2, vocab_size=VOCAB, val_fraction=0.3)
        held.append(sorted(data.records.sets[0].input_index[data.val_rows.items].tolist()))
    assert held[0] == held[1] and 0 < len(held[0]) < 40


def test_val_data_config_and_no_validation(two_sets, record_set, data_config):
    record_set("v", [20, 30, 50, 64, 65])
    val_config = data_config("META:\n  - path: v/record.json\n    ratio: 0.1\n", name="val.yaml")
    data = lumina_data(two_sets, val_data_config=str(val_config), mode="bucket", eval_batch_size=2)
    assert sorted(data.val_records.lengths[data.val_rows.items].tolist()) == [20, 30, 50, 64]  # every item that fits
    assert [b["input_ids"].shape for b in data.val_batches(None)] == [(2, 30), (2, 64)]
    assert data.info()["val_items"] == 4
    assert data.train.state_dict() == lumina_data(two_sets, mode="bucket").train.state_dict()  # val: not in the order
    with pytest.raises(ValueError, match="no validation data: set data.val_data_config or data.val_fraction"):
        lumina_data(two_sets).val_batches(4)


def test_info_and_largest_batch(two_sets):
    data = lumina_data(two_sets)
    info = data.info()
    assert info["items_per_epoch"] == 42 + 45 and info["train_items"] == 90 and info["too_long_items"] == 0
    assert info["ratios"] == "a/record.json: 0.7, b/record.json: 1.5" and info["mode"] == "pack"
    assert info["batches_per_epoch"] == data.train.batches_per_epoch and 0 < info["fill_percent"] <= 100
    assert data.tokens_per_sample == 64
    largest = LuminaData.largest_batch(seq_len=64, batch_size=2, data_config="unread.yaml", mode="bucket")
    assert {name: tuple(value.shape) for name, value in largest.batch.items()} == dict.fromkeys(FIELDS, (2, 64))


def test_batches_per_step_only_matters_with_type_grouping(two_sets):
    state = lumina_data(two_sets, batches_per_step=4).train.state_dict()
    lumina_data(two_sets, batches_per_step=2).train.load_state_dict(state)  # another grad_accum_steps resumes
    grouped = lumina_data(two_sets, batches_per_step=4, group_by_type=True).train.state_dict()
    with pytest.raises(ValueError, match="loader state has batches_per_step=4 but this loader has batches_per_step=2"):
        lumina_data(two_sets, batches_per_step=2, group_by_type=True).train.load_state_dict(grouped)
