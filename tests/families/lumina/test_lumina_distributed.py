"""Two data-parallel ranks save the loader state; one process with twice the batch size resumes from it and gets the
two ranks' next batches, concatenated (2 real processes, gloo)."""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polymodal.distributed.env import gather_objects
from polymodal.families.lumina.data import LuminaData

BATCH, SEQ_LEN, VOCAB = 2, 64, 768


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world: int, port: int, config: str, taken: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    data = LuminaData(config, SEQ_LEN, BATCH, VOCAB, seed=7, dp_rank=rank, dp_world=world)
    for _ in range(taken):
        next(data.train)
    states = gather_objects(data.train.state_dict())
    results[rank] = {"states": states, "next": {name: value.tolist() for name, value in next(data.train).items()}}
    dist.destroy_process_group()


def test_two_ranks_resume_on_one_process_with_twice_the_batch(record_set, data_config):
    lengths = np.random.default_rng(0).integers(5, 60, 80)
    record_set("a", lengths[:50])
    record_set("b", lengths[50:])
    config = str(data_config("META:\n  - path: a/record.json\n  - path: b/record.json\n    ratio: 0.5\n"))
    single = LuminaData(config, SEQ_LEN, 2 * BATCH, VOCAB, seed=7)
    taken = single.train.batches_per_epoch + 2  # the saved position is in the second epoch
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, free_port(), config, taken, results), nprocs=2, join=True)
        results = dict(results)
    states = results[0]["states"]
    assert states[0] == states[1] == results[1]["states"][0] and states[0]["epoch"] == 1
    single.train.load_state_dict(states[0])
    batch = next(single.train)
    for name, value in batch.items():
        assert value.tolist() == results[0]["next"][name] + results[1]["next"][name], name
