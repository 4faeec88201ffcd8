import json
import re

import numpy as np
import pytest
import torch

from polymodal.data.multimodal.loader import GlobalOrder, ResumableLoader, merge_rank_states
from polymodal.data.multimodal.skips import ErrorBudgetExceeded, SampleError


class IdDataset:
    """Sample i is {"value": tensor([i])}; ids in ``bad`` raise SampleError; reads are counted."""

    def __init__(self, size: int, bad: dict[int, str] | None = None) -> None:
        self.size = size
        self.bad = bad or {}
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, sample_id: int) -> dict:
        self.reads.append(sample_id)
        if sample_id in self.bad:
            raise SampleError(self.bad[sample_id], sample_id, "test")
        return {"value": torch.tensor([sample_id], dtype=torch.int64)}


def take_ids(loader: ResumableLoader, steps: int) -> list[list[int]]:
    ids = []
    for _ in range(steps):
        batch = next(loader)
        assert batch["sample_id"].dtype == torch.int64
        assert torch.equal(batch["value"][:, 0], batch["sample_id"])
        ids.append(batch["sample_id"].tolist())
    return ids


def run_ranks(size: int, batch_size: int, dp_world: int, steps: int, state=None, bad=None, seed: int = 3) -> tuple:
    """Per step, the concatenation of all ranks' ids (the global batch), and the final state."""
    loaders = [
        ResumableLoader(IdDataset(size, bad), batch_size, seed=seed, dp_rank=r, dp_world=dp_world)
        for r in range(dp_world)
    ]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(json.loads(json.dumps(state)))
    per_rank = [take_ids(loader, steps) for loader in loaders]
    global_ids = [sum((per_rank[r][s] for r in range(dp_world)), []) for s in range(steps)]
    return global_ids, loaders[0].state_dict()


def test_global_order_matches_naive_permutation_and_rank_split():
    order = GlobalOrder(10, seed=5)
    expected = np.random.default_rng([5, 2]).permutation(10)
    assert np.array_equal(order.epoch_order(2), expected)
    assert order.rank_ids(2, 1, batch_size=2, dp_rank=1, dp_world=2).tolist() == expected[6:8].tolist()
    assert GlobalOrder(4, seed=0, shuffle=False).epoch_order(7).tolist() == [0, 1, 2, 3]


def test_batches_follow_global_order_and_drop_epoch_tail():
    loader = ResumableLoader(IdDataset(11), batch_size=2, seed=3, dp_rank=1, dp_world=2)
    ids = take_ids(loader, 5)  # 11 // 4 = 2 batches per epoch
    expected = []
    for epoch, batch in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]:
        perm = np.random.default_rng([3, epoch]).permutation(11)
        expected.append(perm[batch * 4 + 2 : batch * 4 + 4].tolist())
    assert ids == expected
    assert loader.state_dict() == {
        "epoch": 2,
        "batch_in_epoch": 1,
        "seed": 3,
        "global_batch": 4,
        "num_samples": 11,
        "bad_samples": {},
    }


def test_order_is_independent_of_workers():
    bad = {5: "decode", 17: "missing"}
    plain = ResumableLoader(IdDataset(40, bad), batch_size=3, seed=1, num_workers=0)
    workers = ResumableLoader(IdDataset(40, bad), batch_size=3, seed=1, num_workers=2)
    assert take_ids(plain, 30) == take_ids(workers, 30)
    assert plain.skip_counts() == workers.skip_counts()


def test_resume_continues_exactly():
    uninterrupted = take_ids(ResumableLoader(IdDataset(23), 4, seed=2), 12)
    first = ResumableLoader(IdDataset(23), 4, seed=2)
    head = take_ids(first, 7)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = ResumableLoader(IdDataset(23), 4, seed=2)
    resumed.load_state_dict(state)
    assert head + take_ids(resumed, 5) == uninterrupted


def test_resume_with_workers_rebuilds_iterator_at_new_position():
    reference = take_ids(ResumableLoader(IdDataset(30), 2, seed=4), 9)
    loader = ResumableLoader(IdDataset(30), 2, seed=4, num_workers=2)
    take_ids(loader, 6)  # the workers have prefetched beyond this point
    back = ResumableLoader(IdDataset(30), 2, seed=4)
    take_ids(back, 3)
    loader.load_state_dict(back.state_dict())
    assert take_ids(loader, 6) == reference[3:]


@pytest.mark.parametrize(("before", "after"), [((2, 2), (4, 1)), ((4, 1), (2, 2))])
def test_resume_with_different_dp_world_keeps_global_batches(before, after):
    uninterrupted, _ = run_ranks(26, batch_size=before[0], dp_world=before[1], steps=10)
    head, state = run_ranks(26, batch_size=before[0], dp_world=before[1], steps=4)
    tail, _ = run_ranks(26, batch_size=after[0], dp_world=after[1], steps=6, state=state)
    consumed = head + tail
    assert [sorted(step) for step in consumed] == [sorted(step) for step in uninterrupted]
    for epoch_steps in (consumed[0:6], consumed[6:10]):  # 26 // 4 = 6 batches per epoch
        ids = sum(epoch_steps, [])
        assert len(ids) == len(set(ids))


def test_resume_reads_no_earlier_sample():
    first = ResumableLoader(IdDataset(50), 5, seed=0)
    take_ids(first, 6)
    dataset = IdDataset(50)
    resumed = ResumableLoader(dataset, 5, seed=0)
    resumed.load_state_dict(first.state_dict())
    batch = next(resumed)
    assert sorted(dataset.reads) == sorted(batch["sample_id"].tolist())


def naive_replacement(order: np.ndarray, position: int, global_batch: int, bad: set[int]) -> int:
    batch_start = position - position % global_batch
    candidate = position
    while int(order[candidate]) in bad or (
        candidate != position and batch_start <= candidate < batch_start + global_batch
    ):
        candidate = (candidate + global_batch) % len(order)
    return int(order[candidate])


def test_skips_are_replaced_deterministically_and_counted():
    size, seed = 20, 9
    order = np.random.default_rng([seed, 0]).permutation(size)
    bad = {int(order[1]): "decode", int(order[3]): "decode", int(order[5]): "missing", int(order[9]): "decode"}
    # Position 1 tries order[1], order[5], order[9] (all bad) then order[13]; position 3 tries order[3] then
    # order[7]; position 5 (second batch) tries order[5], order[9], then order[13].
    expected = [naive_replacement(order, p, 4, set(bad)) for p in range(8)]
    for dp_world in (1, 2):
        global_ids, _ = run_ranks(size, batch_size=4 // dp_world, dp_world=dp_world, steps=2, bad=bad, seed=seed)
        assert sum(global_ids, []) == expected
    loader = ResumableLoader(IdDataset(size, bad), 4, seed=seed)
    take_ids(loader, 2)
    assert loader.skip_counts() == {"decode": 3, "missing": 1}  # distinct samples, not failed reads
    assert set(expected).isdisjoint(bad)


def test_error_budget_exceeded_is_one_line_with_counts_and_ids():
    loader = ResumableLoader(IdDataset(30, {i: "decode" for i in range(0, 30, 2)}), 4, seed=0, error_budget=3)
    with pytest.raises(ErrorBudgetExceeded) as caught:
        take_ids(loader, 10)
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(
        r"data error budget exceeded: (\d+) distinct bad samples, budget 3 \(decode=\1\); "
        r"first bad sample ids \[\d+(, \d+){3,4}\]",
        message,
    )


def test_a_bad_sample_visited_every_epoch_counts_once():
    """One corrupt sample among 64, 100 epochs (the run that stopped at step 404 with "first ids [5, 5, ...]")."""
    loader = ResumableLoader(IdDataset(64, {5: "corrupt_image"}), 8, seed=0, error_budget=1)
    take_ids(loader, 800)
    assert loader.skip_counts() == {"corrupt_image": 1}
    assert loader.state_dict()["bad_samples"] == {"corrupt_image": [5]}


def test_a_deferred_budget_is_reported_instead_of_raised():
    """Under the trainer the loader does not raise mid-step: the trainer asks every rank after the step."""
    loader = ResumableLoader(IdDataset(30, {i: "decode" for i in range(0, 30, 2)}), 4, seed=0, error_budget=3)
    loader.defer_budget_check()
    assert loader.over_budget() is None
    for _ in range(8):  # 32 samples read, about half of them bad and replaced
        next(loader)
    assert loader.over_budget().startswith("data error budget exceeded: ") and "budget 3" in loader.over_budget()


def test_bad_samples_survive_a_resume_and_count_against_the_budget():
    first = ResumableLoader(IdDataset(24, {3: "decode", 7: "missing"}), 4, seed=1, error_budget=2)
    take_ids(first, 12)  # two epochs: both bad samples were met
    state = json.loads(json.dumps(first.state_dict()))
    assert state["bad_samples"] == {"decode": [3], "missing": [7]}
    resumed = ResumableLoader(IdDataset(24, {3: "decode", 7: "missing", 11: "decode"}), 4, seed=1, error_budget=2)
    resumed.load_state_dict(state)
    assert resumed.skip_counts() == {"decode": 1, "missing": 1}
    with pytest.raises(ErrorBudgetExceeded, match="3 distinct bad samples, budget 2 \\(decode=2, missing=1\\)"):
        take_ids(resumed, 6)


def test_merged_rank_states_resume_on_another_dp_world_with_every_bad_sample():
    order = np.random.default_rng([3, 0]).permutation(16)
    bad = {int(order[0]): "decode", int(order[2]): "missing"}  # rows of rank 0 resp. rank 1 (batch_size 2)
    ranks = [ResumableLoader(IdDataset(16, bad), 2, seed=3, dp_rank=r, dp_world=2) for r in range(2)]
    for loader in ranks:
        take_ids(loader, 1)
    assert [loader.skip_counts() for loader in ranks] == [{"decode": 1}, {"missing": 1}]
    state = json.loads(json.dumps(merge_rank_states([loader.state_dict() for loader in ranks])))
    single = ResumableLoader(IdDataset(16, bad), 4, seed=3)
    single.load_state_dict(state)
    assert single.skip_counts() == {"decode": 1, "missing": 1}
    assert single.state_dict() == state
    assert take_ids(single, 1)[0] == take_ids(ranks[0], 1)[0] + take_ids(ranks[1], 1)[0]


def test_a_state_without_bad_samples_still_loads():
    loader = ResumableLoader(IdDataset(10), 2, seed=0)
    state = {key: value for key, value in loader.state_dict().items() if key != "bad_samples"}
    loader.load_state_dict(state)
    assert loader.skip_counts() == {}


def test_val_batches_are_sequential_per_rank():
    loaders = [ResumableLoader(IdDataset(10), 2, seed=0, dp_rank=r, dp_world=2) for r in range(2)]
    assert [b["sample_id"].tolist() for b in loaders[1].val_batches()] == [[2, 3], [6, 7]]
    assert [b["sample_id"].tolist() for b in loaders[0].val_batches(max_batches=1)] == [[0, 1]]
    with pytest.raises(ValueError, match="max_batches"):
        loaders[0].val_batches(-1)


def test_bad_arguments_and_states_are_rejected():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableLoader(IdDataset(3), 2, seed=0, dp_world=2)
    with pytest.raises(ValueError, match="dp_rank"):
        ResumableLoader(IdDataset(10), 2, seed=0, dp_rank=2, dp_world=2)
    loader = ResumableLoader(IdDataset(10), 2, seed=0)
    with pytest.raises(ValueError, match="missing keys"):
        loader.load_state_dict({"epoch": 0})
    state = loader.state_dict()
    with pytest.raises(ValueError, match="global_batch"):
        loader.load_state_dict({**state, "global_batch": 4})
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict({**state, "seed": 1})
    with pytest.raises(ValueError, match="invalid loader position"):
        loader.load_state_dict({**state, "batch_in_epoch": 5})
