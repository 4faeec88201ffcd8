"""FSDP2 x 2 (gloo, spawned processes) with activation checkpointing trains a tiny FourM like one process does.

The plan shards and checkpoints every encoder and decoder block. Each rank trains on its half of a 4-sample batch;
FSDP averages gradients over ranks, so the one-process reference backpropagates the mean of the two half-batch
losses. Losses are compared per step (fp32; only the reduction order differs).
"""

import torch
import torch.distributed as dist
from fourm_test_batches import random_batch, tiny_fourm, tiny_registry
from parallel_runs import spawn_gloo
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule

from polymodal.config.schema import DistributedConfig, ExperimentConfig
from polymodal.families.fourm.loss import FourMLoss
from polymodal.train.parallel.mesh import Mesh, ParallelDims
from polymodal.train.parallel.parallelize import parallelize

STEPS, WORLD = 3, 2


def half(batch: dict, part: int) -> dict:
    return {
        name: {key: value[2 * part : 2 * part + 2] for key, value in entry.items()} for name, entry in batch.items()
    }


def fsdp_losses(rank: int, _world: int) -> dict:
    exp = ExperimentConfig(distributed=DistributedConfig(), activation_checkpointing=True)
    mesh = Mesh.build(ParallelDims.from_config(exp.distributed, WORLD), "cpu")
    model, train_model = parallelize(tiny_fourm(), mesh, exp, torch.device("cpu"))
    units = [m for m in model.modules() if isinstance(m, FSDPModule) and isinstance(m, CheckpointWrapper)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch, losses = random_batch(tiny_registry(), batch=4), []
    for _ in range(STEPS):
        loss, _ = FourMLoss()(train_model(half(batch, rank)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / WORLD)
    return {"losses": losses, "units": len(units)}


def single_process_losses() -> list[float]:
    model = tiny_fourm()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch, losses = random_batch(tiny_registry(), batch=4), []
    for _ in range(STEPS):
        loss = sum(FourMLoss()(model(half(batch, part)))[0] for part in range(WORLD)) / WORLD
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_fsdp_with_activation_checkpointing_matches_one_process():
    results = spawn_gloo(fsdp_losses, WORLD)
    expected = single_process_losses()
    assert results[0]["units"] == 4  # 2 encoder + 2 decoder blocks, each sharded and checkpointed
    for rank in range(WORLD):
        for got, want in zip(results[rank]["losses"], expected, strict=True):
            assert abs(got - want) <= 1e-4 * abs(want), (results[rank]["losses"], expected)
    assert expected[-1] < expected[0]  # it trains (the same batch every step)
