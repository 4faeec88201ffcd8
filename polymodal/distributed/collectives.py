"""Collectives with gradients: gather activations from peers and still back-propagate into every rank's part."""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's tensor along ``dim``. Backward: each rank's input receives the sum,
    over all ranks, of the gradient flowing into its slice (every rank used the whole gathered tensor)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
        world = dist.get_world_size(group)
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        ctx.dim, ctx.group, ctx.rank, ctx.size = dim, group, dist.get_rank(group), tensor.shape[dim]
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size), None, None


def all_gather_with_grad(tensor: torch.Tensor, dim: int = 0, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """``cat`` of every rank's ``tensor`` along ``dim`` (equal shapes), differentiable; identity on one rank.

    Uses: contrastive losses that need every rank's embeddings as negatives (gather along the batch over the
    data-parallel group), and context parallelism (gather keys/values along the sequence over the CP group).
    """
    if group is None and not dist.is_initialized():
        return tensor
    if dist.get_world_size(group) == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, dim, group)
