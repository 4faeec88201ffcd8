"""MoE blocks as FSDP2 units (2 real gloo processes): each rank's loss, router statistics included, and the averaged
gradients equal one process computing both ranks' batches with the unsharded model."""

import torch
from parallel_runs import spawn_gloo
from torch.distributed.fsdp import fully_shard

from polymodal.models.layers.block import build_transformer
from polymodal.models.meta import MetaModel, WeightedObjectives
from polymodal.models.parts import LinearHead, TransformerTrunk
from polymodal.objectives.lm import NextTokenLoss
from polymodal.objectives.moe import MoEAuxLoss

WORLD = 2


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


def worker(rank: int, world: int) -> None:
    reference = make_model()
    losses = [loss_of(reference, r) for r in range(world)]
    (sum(losses) / world).backward()

    model = make_model()
    for block in model.trunk.transformer.blocks:
        fully_shard(block)
    fully_shard(model)
    loss = loss_of(model, rank)
    loss.backward()
    torch.testing.assert_close(loss, losses[rank].detach(), rtol=1e-5, atol=1e-6)
    for (name, param), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param.grad.full_tensor(), expected.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_fsdp2_moe_blocks_match_one_process():
    spawn_gloo(worker, WORLD)
