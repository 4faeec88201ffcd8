"""Mixture-of-experts layers in a plan: the capacity a dropless layer is planned at, the parameters a token meets,
the expert weights one rank holds under expert parallelism and the all-to-alls that exchange the tokens.

A dropless :class:`~polymodal.models.layers.moe.MoEFeedForward` sizes its ``[E, C, D]`` buffer from the busiest
expert's load, a value that follows the router's activations, which a run on fake tensors does not have. The
planner therefore plans it at a chosen capacity (``DroplessCapacity``): ``"worst"``, every token of the layer's
input routed to one expert (``C = N``: a token's ``top_k`` experts are distinct, so no expert gets more), the bound
a dropless run can reach; or ``"balanced"``, ``C = ceil(N·k/E)``. It sets the layer's ``capacity_factor`` to the
one that gives that capacity, so the fake run takes the layer's own code path with static shapes. A layer with a
``capacity_factor`` is planned as configured.

Expert parallelism over ``ep`` data-parallel ranks (``shard_experts``) cuts every expert weight in ``ep`` slices
along the expert dimension, the way tensor parallelism cuts a weight: parameters, gradients and AdamW state of the
experts are divided by ``ep``, and data parallelism then treats each slice as it treats any parameter. Per MoE layer
and micro-step, two ``all_to_all_single`` of the ``[E, C, D]`` buffer run forward (dispatch and return), two in
backward, and two more when activation checkpointing recomputes the block; one rank sends ``(ep-1)/ep`` of it each.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal

from torch import Tensor, nn

from polymodal.config import ConfigError
from polymodal.models.layers.moe import MoEFeedForward
from polymodal.train.parallel.planner.shapes import Layout, ParamShape

DroplessCapacity = Literal["worst", "balanced"]
DROPLESS_CAPACITIES: tuple[DroplessCapacity, ...] = ("worst", "balanced")


@dataclass(frozen=True)
class MoELayer:
    """One MoE layer as planned: its experts, the capacity factor it is planned at (``dropless``: the rule that gave
    a dropless layer's, None when configured), its parameters (router and experts), and the tokens of its input in
    one micro-step and their bytes per element (0 until the fake run has seen them)."""

    name: str
    num_experts: int
    top_k: int
    dim: int
    capacity_factor: float | Fraction
    dropless: DroplessCapacity | None
    router_params: int
    expert_params: int
    tokens: int = 0
    element_bytes: int = 0

    @property
    def capacity(self) -> int:
        """Slots per expert in the planned micro-step (the layer's own formula)."""
        return math.ceil(self.capacity_factor * self.tokens * self.top_k / self.num_experts)

    @property
    def active_params(self) -> int:
        """What one token meets: the router and ``top_k`` of the experts."""
        return self.router_params + self.expert_params * self.top_k // self.num_experts


def _dropless_factor(layer: MoEFeedForward, dropless: DroplessCapacity) -> Fraction:
    """The capacity factor that gives ``C = N`` (worst) or ``C = ceil(N·k/E)`` (balanced) in the layer's formula."""
    return Fraction(layer.num_experts, layer.top_k) if dropless == "worst" else Fraction(1)


class MoELayers:
    """The MoE layers of a meta-device model, set up for a fake run: dropless ones get the capacity factor of
    their planned capacity, and a forward pre-hook records the tokens each layer sees (``layers()`` afterwards)."""

    def __init__(self, model: nn.Module, dropless: DroplessCapacity = "worst") -> None:
        self._modules = [(name, m) for name, m in model.named_modules() if isinstance(m, MoEFeedForward)]
        self._planned: list[MoELayer] = []
        self._inputs: dict[int, tuple[int, int]] = {}  # layer index -> (tokens, bytes per element)
        for index, (name, module) in enumerate(self._modules):
            rule = dropless if module.capacity_factor is None else None
            factor = module.capacity_factor if rule is None else _dropless_factor(module, rule)
            self._planned.append(
                MoELayer(
                    name,
                    module.num_experts,
                    module.top_k,
                    module.router.in_features,
                    factor,
                    rule,
                    router_params=sum(p.numel() for p in module.router.parameters()),
                    expert_params=sum(p.numel() for p in module.experts.parameters()),
                )
            )
            module.capacity_factor = factor
            module.register_forward_pre_hook(self._recorder(index))

    def _recorder(self, index: int):
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            self._inputs[index] = (math.prod(args[0].shape[:-1]), args[0].element_size())

        return record

    def expert_parameter_names(self, model: nn.Module) -> frozenset[str]:
        """The names in ``model.named_parameters()`` of the expert weights (and biases)."""
        ids = {id(p) for _, module in self._modules for p in module.experts.parameters()}
        return frozenset(name for name, p in model.named_parameters() if id(p) in ids)

    def layers(self) -> tuple[MoELayer, ...]:
        """The layers with the input of the last recorded forward."""
        found = []
        for index, layer in enumerate(self._planned):
            tokens, size = self._inputs.get(index, (0, 0))
            found.append(replace(layer, tokens=tokens, element_bytes=size))
        return tuple(found)


def active_params(total: int, layers: Sequence[MoELayer]) -> int:
    """Parameters one token meets: all but the experts, plus ``top_k`` experts of each MoE layer."""
    return total - sum(layer.expert_params for layer in layers) + sum(layer.active_params for layer in layers)


def check_expert_parallel(layers: Sequence[MoELayer], layout: Layout) -> None:
    """A one-line ConfigError when the layout's ``ep`` cannot shard these experts (that it divides ``dp_shard``
    is the mesh's own check)."""
    ep = layout.expert_parallel
    if ep == 1:
        return
    if not layers:
        raise ConfigError(f"expert parallelism (ep={ep}) needs MoE layers; the model has none")
    for layer in layers:
        if layer.num_experts % ep:
            raise ConfigError(f"ep={ep} must divide {layer.name}'s num_experts={layer.num_experts}")


def expert_parallel_params(
    params: Sequence[ParamShape], expert_names: Container[str], ep: int
) -> tuple[ParamShape, ...]:
    """``params`` as one rank of ``ep`` holds them: each expert weight (marked ``expert``) a slice of ``E/ep``
    experts."""
    return tuple(
        replace(p, shape=(p.shape[0] // ep, *p.shape[1:]), expert=True) if p.name in expert_names else p for p in params
    )


def all_to_all_bytes(layer: MoELayer, ep: int) -> float:
    """What one rank sends in one all-to-all of the layer's ``[E, C, D]`` buffer: all but its own ``1/ep``."""
    return (ep - 1) / ep * layer.num_experts * layer.capacity * layer.dim * layer.element_bytes
