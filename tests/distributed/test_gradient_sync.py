"""Gradient accumulation under DDP communicates only on the final micro-step (2 real processes, gloo)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from polymodal.distributed.env import gradient_sync

MICRO_STEPS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def micro_batch(rank: int, micro: int) -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(100 * rank + micro))


def worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = DistributedDataParallel(make_model())
    calls = []

    def counting_hook(state, bucket):
        calls.append(micro_now[0])
        future = torch.futures.Future()
        tensor = bucket.buffer()
        dist.all_reduce(tensor)
        future.set_result(tensor / world)
        return future

    micro_now = [None]
    model.register_comm_hook(None, counting_hook)
    for micro in range(MICRO_STEPS):
        micro_now[0] = micro
        with gradient_sync(model, enabled=micro == MICRO_STEPS - 1):
            (model(micro_batch(rank, micro)).square().mean() / MICRO_STEPS).backward()
    results[rank] = {
        "calls": calls,
        "grads": [p.grad.clone() for p in model.parameters()],
    }
    dist.destroy_process_group()


def test_accumulation_syncs_once_and_matches_the_full_batch_gradient():
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(world, free_port(), results), nprocs=world, join=True)
        results = dict(results)

    for rank in range(world):
        assert results[rank]["calls"], "no gradient communication at all"
        assert set(results[rank]["calls"]) == {MICRO_STEPS - 1}, "communicated on a non-final micro-step"

    reference = make_model()
    for rank in range(world):
        for micro in range(MICRO_STEPS):
            (reference(micro_batch(rank, micro)).square().mean() / (MICRO_STEPS * world)).backward()
    for rank in range(world):
        for got, expected in zip(results[rank]["grads"], (p.grad for p in reference.parameters()), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
