"""Expert parallelism: the experts of every MoE layer sharded over a process group, tokens exchanged by all-to-all.

Each rank routes its own tokens and fills its ``[E, C, D]`` dispatch buffer as usual (the model code is unchanged).
:class:`ExpertParallelExperts` replaces the layer's :class:`~polymodal.models.layers.moe.GroupedExperts`: rank ``r``
keeps experts ``r * E/G .. (r + 1) * E/G - 1``; one ``all_to_all_single`` sends each expert's slots to its owner, the
owner runs its experts on the slots of all ranks at once, and a second all-to-all returns the outputs. Both
collectives are differentiable (``torch.distributed.nn.functional``), so expert gradients collect the contributions
of every rank's tokens. The buffers are padded to the group's largest capacity (dropless layers differ per rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn.functional import all_to_all_single

from polymodal.models.layers.moe import GroupedExperts, MoEFeedForward


def local_experts(experts: GroupedExperts, rank: int, world: int) -> GroupedExperts:
    """The ``rank``-th of ``world`` equal slices of ``experts``, as a module of its own (copies of the weights)."""
    if experts.num_experts % world:
        raise ValueError(f"expert parallel size {world} must divide num_experts={experts.num_experts}")
    count = experts.num_experts // world
    local = GroupedExperts(count, experts.dim, experts.hidden_dim, experts.kind, bias=experts.b1 is not None)
    with torch.no_grad():
        for name, param in local.named_parameters():
            param.copy_(getattr(experts, name)[rank * count : (rank + 1) * count])
    return local


class ExpertParallelExperts(nn.Module):
    """``[E, C, D] -> [E, C, D]`` like :class:`GroupedExperts`, computing only this rank's experts (``self.local``)."""

    def __init__(self, experts: GroupedExperts, group: dist.ProcessGroup | None = None):
        super().__init__()
        self.group = group if group is not None else dist.group.WORLD
        self.world = dist.get_world_size(group)
        self.num_experts = experts.num_experts
        self.local = local_experts(experts, dist.get_rank(group), self.world)

    @property
    def weights_per_expert(self) -> int:
        return self.local.weights_per_expert

    def forward(self, buffer: Tensor) -> Tensor:
        num_experts, capacity, dim = buffer.shape
        if num_experts != self.num_experts:
            raise ValueError(f"expected a buffer of {self.num_experts} experts, got {tuple(buffer.shape)}")
        largest = torch.tensor([capacity], device=buffer.device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.group)
        padded = int(largest)
        buffer = F.pad(buffer, (0, 0, 0, padded - capacity))
        per_rank = self.local.num_experts
        # Row blocks of E/G experts go to their owners; what arrives is [source rank, local expert, slot, D].
        received = all_to_all_single(torch.empty_like(buffer), buffer.contiguous(), group=self.group)
        slots = received.view(self.world, per_rank, padded, dim).transpose(0, 1).reshape(per_rank, -1, dim)
        out = self.local(slots).view(per_rank, self.world, padded, dim).transpose(0, 1).contiguous()
        returned = all_to_all_single(torch.empty_like(out), out, group=self.group)
        return returned.view(num_experts, padded, dim)[:, :capacity]


def shard_experts(model: nn.Module, group: dist.ProcessGroup | None = None) -> int:
    """Replace the experts of every MoE layer of ``model`` by their expert-parallel shard; returns how many layers."""
    layers = [module for module in model.modules() if isinstance(module, MoEFeedForward)]
    for layer in layers:
        layer.experts = ExpertParallelExperts(layer.experts, group)
    return len(layers)
