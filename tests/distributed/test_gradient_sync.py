"""Gradient accumulation under DDP communicates only on the final micro-step (2 real processes, gloo)."""

import torch
import torch.distributed as dist
from parallel_runs import spawn_gloo
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from polymodal.distributed.env import gradient_sync

MICRO_STEPS = 3


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def micro_batch(rank: int, micro: int) -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(100 * rank + micro))


def worker(rank: int, world: int) -> dict:
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
    return {"calls": calls, "grads": [p.grad.clone() for p in model.parameters()]}


def test_accumulation_syncs_once_and_matches_the_full_batch_gradient():
    world = 2
    results = spawn_gloo(worker, world)
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
