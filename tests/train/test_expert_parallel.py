"""Expert parallelism over 2 real gloo processes equals one process holding every expert.

Each rank routes its own tokens; the reference runs the unsharded layer on each rank's tokens in one process. Outputs,
router statistics and router gradients match per rank; each rank's expert gradients match the reference gradients of
its experts from both ranks' tokens (the all-to-all sends them the other rank's slots). The sharded parameters keep
the unsharded names and global shapes (``Shard(0)`` DTensors), so state dicts do not depend on the ep size."""

import pytest
import torch
from parallel_runs import spawn_gloo
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import parallelize_module

from polymodal.models.layers.moe import GroupedExperts, MoEFeedForward
from polymodal.train.parallel.expert_parallel import ExpertParallel, shard_experts

WORLD = 2
TOL = {"rtol": 1e-5, "atol": 1e-5}


def make_layer(capacity_factor) -> MoEFeedForward:
    torch.manual_seed(0)
    return MoEFeedForward(8, 12, 4, top_k=2, capacity_factor=capacity_factor, kind="swiglu")


def tokens(rank: int) -> torch.Tensor:
    return torch.randn(3 + 2 * rank, 5, 8, generator=torch.Generator().manual_seed(10 + rank))  # ranks differ in size


def loss_of(out: torch.Tensor, stats: dict) -> torch.Tensor:
    return out.square().mean() + stats["balance_loss"] + 0.1 * stats["router_z_loss"]


def worker(rank: int, world: int, capacity_factor) -> None:
    reference = make_layer(capacity_factor)
    expected = [reference(tokens(r)) for r in range(world)]
    sum(loss_of(*result) for result in expected).backward()
    own_router_grad = torch.autograd.grad(loss_of(*reference(tokens(rank))), reference.router.weight)[0]

    layer = make_layer(capacity_factor)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
    with pytest.raises(ValueError, match="must divide num_experts=3"):
        parallelize_module(GroupedExperts(3, 8, 12), mesh, ExpertParallel())
    assert shard_experts(layer, mesh) == 1
    assert set(layer.state_dict()) == set(reference.state_dict())
    for name, param in layer.experts.named_parameters():
        assert isinstance(param, DTensor) and param.placements == (Shard(0),)
        assert param.shape == getattr(reference.experts, name).shape
    out, stats = layer(tokens(rank))
    loss_of(out, stats).backward()

    torch.testing.assert_close(out, expected[rank][0], **TOL)
    for name, value in stats.items():
        torch.testing.assert_close(value, expected[rank][1][name], **TOL)
    torch.testing.assert_close(layer.router.weight.grad, own_router_grad, **TOL)
    mine = slice(2 * rank, 2 * rank + 2)
    for name, param in layer.experts.named_parameters():
        torch.testing.assert_close(param.grad.to_local(), getattr(reference.experts, name).grad[mine], **TOL)
        torch.testing.assert_close(param.full_tensor(), getattr(reference.experts, name), **TOL)


@pytest.mark.parametrize("capacity_factor", [None, 0.75], ids=["dropless", "capacity"])
def test_expert_parallel_equals_one_process_with_all_experts(capacity_factor):
    spawn_gloo(worker, WORLD, capacity_factor)
