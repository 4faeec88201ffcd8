"""What autograd saves for backward in one forward + loss, as distinct storages, split by the units that save it.

Several saved tensors often share one storage (a view, the input of three projections, a mask every block keeps),
so bytes are counted per storage. A storage is known by its identity, ``untyped_storage()._cdata`` (meta and fake
tensors have no data pointer); :class:`SavedStorages` keeps every storage it has seen alive, so an identity is
never reused by a later storage during the recording.

The units are what FSDP shards and activation checkpointing wraps (``train.parallel.plans.fsdp_units``). A tensor
saved while a unit runs belongs to it; anything else (embeddings, heads, the loss) is saved outside. Parameters,
buffers and the batch are never activations: they are counted on their own lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class SavedTensors:
    """Bytes of the distinct storages autograd saves, by where they are saved (see the module docstring).

    Without activation checkpointing ``outside + in_units`` stay alive until backward. With it, each unit keeps only
    its inputs (``unit_inputs``: those not already saved outside), and in backward one unit at a time saves its
    tensors again while it is recomputed (``recompute``: the largest unit's, beyond what is kept anyway).
    """

    outside: int
    in_units: int
    unit_inputs: int
    recompute: int
    batch: int  # the batch's tensors, saved or not: they live for the whole micro-step


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) structure of containers: a batch dict, a module's arguments."""
    return [leaf for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)]


class SavedStorages:
    """Records, per unit, the storages autograd saves and the storages of the units' inputs."""

    def __init__(self, units: list[nn.Module]) -> None:
        self._units = units
        self._sizes: dict[int, int] = {}
        self._alive: list[torch.UntypedStorage] = []
        self._outside: set[int] = set()
        self._inside: list[set[int]] = [set() for _ in units]
        self._inputs: list[set[int]] = [set() for _ in units]
        self._running: list[int] = []

    def key(self, tensor: torch.Tensor) -> int:
        storage = tensor.untyped_storage()
        if storage._cdata not in self._sizes:
            self._sizes[storage._cdata] = storage.nbytes()
            self._alive.append(storage)
        return storage._cdata

    def keys(self, tensors: Iterable[torch.Tensor]) -> set[int]:
        return {self.key(tensor) for tensor in tensors}

    def bytes(self, keys: Iterable[int]) -> int:
        return sum(self._sizes[key] for key in keys)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        (self._inside[self._running[-1]] if self._running else self._outside).add(self.key(tensor))
        return tensor

    def _enter(self, index: int) -> Callable[..., None]:
        def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._running.append(index)
            self._inputs[index] |= self.keys(tensors_in((args, kwargs)))

        return enter

    def _leave(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self._running.pop()

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record what autograd saves while the block runs (each unit's hooks run after those already there)."""
        with ExitStack() as stack:
            for index, unit in enumerate(self._units):
                stack.callback(unit.register_forward_pre_hook(self._enter(index), with_kwargs=True).remove)
                stack.callback(unit.register_forward_hook(self._leave, with_kwargs=True).remove)
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor))
            yield

    def result(self, model: nn.Module, batch: Any) -> SavedTensors:
        """The recording's bytes, parameters and buffers of ``model`` and the tensors of ``batch`` left out."""
        batch_keys = self.keys(tensors_in(batch))
        excluded = batch_keys | self.keys(model.parameters()) | self.keys(model.buffers())
        outside = self._outside - excluded
        inside = set().union(*self._inside) - outside - excluded
        inputs = set().union(*self._inputs) - outside - excluded
        kept = outside | inputs
        return SavedTensors(
            outside=self.bytes(outside),
            in_units=self.bytes(inside),
            unit_inputs=self.bytes(inputs),
            recompute=max((self.bytes(unit - kept - excluded) for unit in self._inside), default=0),
            batch=self.bytes(batch_keys),
        )
