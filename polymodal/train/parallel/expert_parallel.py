"""Expert parallelism: the experts of every MoE layer sharded over the ``ep`` mesh dimension, tokens exchanged by
all-to-all.

Each rank routes its own tokens and fills its ``[E, C, D]`` dispatch buffer as usual (the model code is unchanged).
:class:`ExpertParallel` turns the stacked weights of the layer's
:class:`~polymodal.models.layers.moe.GroupedExperts` into ``DTensor`` parameters sharded along the experts
(``Shard(0)``): rank ``r`` of the ``G`` ranks holds experts ``r * E/G .. (r + 1) * E/G - 1``, and the parameter names
and global shapes are those of the unsharded layer, so checkpoints move between expert-parallel sizes. Around the
experts' forward, one ``all_to_all_single`` sends each expert's slots to its owner, the owner runs its experts on the
slots of all ranks at once (the batched matmuls of ``GroupedExperts`` on ``Shard(0)`` DTensors), and a second
all-to-all returns the outputs. Both collectives are differentiable (``torch.distributed.nn.functional``), so expert
gradients collect the contributions of every rank's tokens. The buffers are padded to the group's largest capacity
(dropless layers, and layers fed different numbers of tokens, differ per rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.nn.functional import all_to_all_single
from torch.distributed.tensor import DTensor, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from polymodal.models.layers.moe import GroupedExperts, MoEFeedForward


class ExpertParallel(ParallelStyle):
    """Shards a :class:`GroupedExperts` over a 1-D mesh and exchanges its ``[E, C, D]`` buffer by all-to-all.

    One instance serves one module: between the input and the output hook it keeps the capacity of the buffer it
    was given (as torchtitan's ``ExpertParallel`` keeps its splits), so each forward returns what it received."""

    def __init__(self) -> None:
        super().__init__()
        self.capacity = 0

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, GroupedExperts):
            raise TypeError(f"ExpertParallel shards GroupedExperts, not {type(module).__name__}")
        if module.num_experts % device_mesh.size():
            raise ValueError(f"expert parallel size {device_mesh.size()} must divide num_experts={module.num_experts}")
        return distribute_module(module, device_mesh, self._shard_experts, self._dispatch, self._combine)

    @staticmethod
    def _shard_experts(_name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for name, param in list(module.named_parameters(recurse=False)):
            sharded = distribute_tensor(param, mesh, [Shard(0)])
            module.register_parameter(name, nn.Parameter(sharded, param.requires_grad))

    def _dispatch(self, module: nn.Module, inputs: tuple[Tensor, ...], mesh: DeviceMesh) -> tuple[DTensor]:
        """``[E, C, D]`` slots of this rank's tokens -> ``[E/G, G·C_max, D]`` slots of all ranks for this rank's
        experts, as a ``Shard(0)`` DTensor of global shape ``[E, G·C_max, D]``."""
        (buffer,) = inputs
        num_experts, capacity, dim = buffer.shape
        if num_experts != module.num_experts:
            raise ValueError(f"expected a buffer of {module.num_experts} experts, got {tuple(buffer.shape)}")
        group, world = mesh.get_group(), mesh.size()
        largest = torch.tensor([capacity], device=buffer.device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=group)
        padded = int(largest)
        self.capacity = capacity
        buffer = F.pad(buffer, (0, 0, 0, padded - capacity)).contiguous()
        per_rank = num_experts // world
        # Row blocks of E/G experts go to their owners; what arrives is [source rank, local expert, slot, D].
        received = all_to_all_single(torch.empty_like(buffer), buffer, group=group)
        slots = received.view(world, per_rank, padded, dim).transpose(0, 1).reshape(per_rank, world * padded, dim)
        return (DTensor.from_local(slots, mesh, [Shard(0)], run_check=False),)

    def _combine(self, module: nn.Module, output: DTensor, mesh: DeviceMesh) -> Tensor:
        """The inverse exchange: this rank's ``[E, C, D]`` outputs, trimmed to the capacity it sent."""
        group, world = mesh.get_group(), mesh.size()
        local = output.to_local()
        per_rank, _, dim = local.shape
        padded = local.shape[1] // world
        out = local.view(per_rank, world, padded, dim).transpose(0, 1).contiguous()
        returned = all_to_all_single(torch.empty_like(out), out, group=group)
        return returned.view(module.num_experts, padded, dim)[:, : self.capacity]


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    return [module for module in model.modules() if isinstance(module, MoEFeedForward)]


def shard_experts(model: nn.Module, ep_mesh: DeviceMesh) -> int:
    """Shard the experts of every MoE layer of ``model`` over ``ep_mesh``; returns how many layers."""
    layers = moe_layers(model)
    for layer in layers:
        parallelize_module(layer.experts, ep_mesh, ExpertParallel())
    return len(layers)
