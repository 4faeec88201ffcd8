"""Checkpointed loader state carries the bad samples every rank found (2 real processes, gloo)."""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    loader = ResumableLoader(BadIds(bad_ids()), 2, seed=SEED, dp_rank=rank, dp_world=world)
    next(loader)
    results[rank] = {"own": loader.skip_counts(), "merged": merge_rank_states(gather_objects(loader.state_dict()))}
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_rank_saves_the_union_of_the_bad_samples():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, free_port(), results), nprocs=2, join=True)
        results = dict(results)
    assert [results[r]["own"] for r in range(2)] == [{"decode": 1}, {"missing": 1}]
    expected = {name: [i] for i, name in bad_ids().items()}
    assert results[0]["merged"] == results[1]["merged"]
    assert results[0]["merged"]["bad_samples"] == expected and results[0]["merged"]["batch_in_epoch"] == 1
