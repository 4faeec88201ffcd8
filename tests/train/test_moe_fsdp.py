"""MoE blocks as FSDP2 units (2 real gloo processes): each rank's loss, router statistics included, and the averaged
gradients equal one process computing both ranks' batches with the unsharded model."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard

from polymodal.models.layers.block import build_transformer
from polymodal.models.meta import MetaModel, WeightedObjectives
from polymodal.models.parts import LinearHead, TransformerTrunk
from polymodal.objectives.lm import NextTokenLoss
from polymodal.objectives.moe import MoEAuxLoss

WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_model() -> MetaModel:
    torch.manual_seed(0)
    transformer = build_transformer(16, 2, 2, rope=None, multiple_of=8, moe={"num_experts": 4, "top_k": 2})
    return MetaModel(
        trunk=TransformerTrunk(transformer, "tokens", "tokens", mask_key=None, position_key=None, cache_key=None),
        head=LinearHead(16, 8, read_key="tokens", write_key="logits"),
    )


def loss_of(model: MetaModel, rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank)
    tokens = torch.randn(2, 6, 16, generator=generator)
    batch = {"tokens": tokens, "target_ids": torch.randint(0, 8, (2, 6), generator=generator)}
    objective = WeightedObjectives({"lm": NextTokenLoss(), "moe": MoEAuxLoss(balance_weight=0.1, z_loss_weight=0.1)})
    return objective(model(batch))[0]


def worker(rank: int, port: int, errors) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        reference = make_model()
        losses = [loss_of(reference, r) for r in range(WORLD)]
        (sum(losses) / WORLD).backward()

        model = make_model()
        for block in model.trunk.transformer.blocks:
            fully_shard(block)
        fully_shard(model)
        loss = loss_of(model, rank)
        loss.backward()
        torch.testing.assert_close(loss, losses[rank].detach(), rtol=1e-5, atol=1e-6)
        for (name, param), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(param.grad.full_tensor(), expected.grad, rtol=1e-5, atol=1e-6, msg=name)
    except Exception as error:  # reported to the parent, which fails the test with the message
        errors.put(f"rank {rank}: {type(error).__name__}: {error}")
        raise
    finally:
        dist.destroy_process_group()


def test_fsdp2_moe_blocks_match_one_process():
    errors = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(worker, args=(free_port(), errors), nprocs=WORLD, start_method="spawn")
    assert errors.empty(), errors.get()
