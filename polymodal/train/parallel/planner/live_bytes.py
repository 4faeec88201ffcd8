"""The bytes alive during a run on fake tensors, and their peak: what a training step holds beyond what autograd
saves (the model's outputs, gradients in flight through backward).

:class:`LiveBytes` counts every storage an operation creates while it is active, from its first tensor until its
last one dies (a finalizer on each tensor: a fake tensor's Python object lives as long as the tensor itself).
A storage is new when an operation's output has it and none of the operation's inputs does: a view or an in-place
result shares its input's storage, so a storage made before (parameters, buffers, the batch) is not counted even
through a view made during the run (``weight.t()``). Parameter gradients are not counted either, from the moment
they are accumulated into ``.grad`` (the plan counts those on their own lines).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from polymodal.train.parallel.planner.saved_storages import tensors_in


class LiveBytes(TorchDispatchMode):
    """``live``: bytes of the storages created while active that a tensor still holds; ``peak``: their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # storage -> bytes counted (0: made before, or a gradient)
        self._holders: dict[int, int] = {}  # storage -> tensors alive on it
        self._tracked: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._gradients: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {tensor.untyped_storage()._cdata for tensor in tensors_in((args, kwargs))}
        output = func(*args, **(kwargs or {}))
        for tensor in tensors_in(output):
            self._track(tensor, inputs)
        self.peak = max(self.peak, self.live)
        return output

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        if tensor in self._tracked:
            return
        self._tracked[tensor] = True
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self._holders:
            self._holders[key] = 0
            self._sizes[key] = 0 if key in inputs or key in self._gradients else storage.nbytes()
            self.live += self._sizes[key]
        self._holders[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self._holders[key] -= 1
        if self._holders[key] == 0:
            del self._holders[key]
            self.live -= self._sizes.pop(key)

    def gradient(self, tensor: torch.Tensor) -> None:
        """``tensor`` is a parameter's gradient now: no longer counted."""
        key = tensor.untyped_storage()._cdata
        self._gradients.add(key)
        if key in self._sizes:
            self.live -= self._sizes[key]
            self._sizes[key] = 0
