"""Checkpointed loader state carries the bad samples every rank found (2 real processes, gloo)."""

import numpy as np
import torch
from parallel_runs import spawn_gloo

from polymodal.data.multimodal.loader import ResumableLoader, merge_rank_states
from polymodal.data.multimodal.skips import SampleError
from polymodal.distributed.env import gather_objects

SEED, SIZE = 3, 16


class BadIds:
    def __init__(self, bad: dict[int, str]) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, sample_id: int) -> dict:
        if sample_id in self.bad:
            raise SampleError(self.bad[sample_id], sample_id, "test")
        return {"value": torch.tensor([sample_id])}


def bad_ids() -> dict[int, str]:
    order = np.random.default_rng([SEED, 0]).permutation(SIZE)
    return {int(order[0]): "decode", int(order[2]): "missing"}  # a row of rank 0 resp. rank 1 (batch_size 2)


def worker(rank: int, world: int) -> dict:
    loader = ResumableLoader(BadIds(bad_ids()), 2, seed=SEED, dp_rank=rank, dp_world=world)
    next(loader)
    return {"own": loader.skip_counts(), "merged": merge_rank_states(gather_objects(loader.state_dict()))}


def test_every_rank_saves_the_union_of_the_bad_samples():
    results = spawn_gloo(worker, 2)
    assert [results[r]["own"] for r in range(2)] == [{"decode": 1}, {"missing": 1}]
    expected = {name: [i] for i, name in bad_ids().items()}
    assert results[0]["merged"] == results[1]["merged"]
    assert results[0]["merged"]["bad_samples"] == expected and results[0]["merged"]["batch_in_epoch"] == 1
