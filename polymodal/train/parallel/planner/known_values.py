"""The values of the integer and boolean tensors of a run on fake tensors, so that shapes that follow them resolve,
and of the scalars computed from them.

Fake tensors (meta tensors that report a device) have shapes and no values. A few shapes in a model follow values:
boolean indexing (4M's heads keep the selected tokens: ``hidden[selected]``), ``nonzero``, ``bincount``; and
Python control flow reads some (``.item()``, ``if mask.any():``). Those values come from the batch's integer
tensors (token ids, selection masks), not from floating-point activations. So :class:`KnownValues` runs every
operation whose output is an integer or boolean tensor, and whose inputs it knows, a second time on the CPU on
real values, and keeps the result beside the fake tensor. It does the same for one-element floating-point
tensors: the loss's weighting (a count's reciprocal, a weight) and the gradients backward starts from
(``ones_like(loss)``, whose value does not read the loss's) are known, so a check on them (the chunked head loss
asks whether its incoming gradients have the ratio it computed its gradients for) takes the path a real run takes.

An operation the fake tensors cannot run for want of values is then run on the known values, and boolean index
tensors are replaced by the index lists of their true elements (so the indexed tensor needs no values). A value
that follows floating-point activations (or uninitialised memory) is not known. Where one is needed outside
autograd (a metric's ``bincount`` of codes, a check's ``.item()``) it is read as zeros (``False``): the run then
stands for all-zero activations there, which changes nothing autograd saves. Where it would decide a shape that
autograd sees (routing tokens by their activations), the model cannot be planned this way: a ConfigError says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from polymodal.config import ConfigError

aten = torch.ops.aten

INDEX_OPS = (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default)
UNINITIALISED = (
    aten.empty.memory_format,
    aten.empty_like.default,
    aten.empty_strided.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
)
# Outputs whose values do not read their input's values: known whatever the input.
VALUE_FREE = (
    aten.ones_like.default,
    aten.zeros_like.default,
    aten.full_like.default,
    aten.new_ones.default,
    aten.new_zeros.default,
    aten.new_full.default,
)


def _is_integer(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not value.is_floating_point() and not value.is_complex()


def _is_kept(value: Any) -> bool:
    """An integer or boolean tensor, or a one-element tensor (module docstring)."""
    return _is_integer(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)


def _differentiable(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """Whether autograd records the operation: its output shapes are then the shapes of saved tensors."""
    return torch.is_grad_enabled() and any(
        leaf.requires_grad for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)
    )


def _mutated(func: torch._ops.OpOverload, args: Sequence[Any], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors an in-place or ``out=`` operation writes."""
    written = []
    for index, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = args[index] if index < len(args) else kwargs.get(argument.name)
        written += [leaf for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)]
    return written


class KnownValues(TorchDispatchMode):
    """Push inside a ``FakeTensorMode`` (module docstring); ``value(tensor)`` is the known CPU value, or None."""

    def __init__(self) -> None:
        super().__init__()
        self._values: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def value(self, tensor: torch.Tensor) -> torch.Tensor | None:
        return self._values.get(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in INDEX_OPS:
            args = (args[0], self._index_lists(args[1], _differentiable(args, kwargs)), *args[2:])
        try:
            output = func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            return self._run_on_values(func, args, kwargs, _differentiable(args, kwargs))
        inputs = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)]
        value_free = func in VALUE_FREE
        known = func not in UNINITIALISED and (value_free or all(self.value(tensor) is not None for tensor in inputs))
        if known and any(_is_kept(leaf) for leaf in tree_flatten(output)[0]):
            try:
                self._remember(output, self._on_values(func, args, kwargs, fill=value_free))
            except (RuntimeError, NotImplementedError):  # not on the CPU, or not for these dtypes: unknown
                known = False
        if not known:
            for tensor in _mutated(func, args, kwargs):
                if _is_kept(tensor):
                    self._forget_storage(tensor)
        return output

    def _on_values(
        self, func: Callable, args: Sequence[Any], kwargs: dict[str, Any], fill: bool, differentiable: bool = False
    ) -> Any:
        """``func`` on the CPU values of its tensors; unknown ones are zeros when ``fill``, unless the operation is
        ``differentiable`` (module docstring)."""

        def real(leaf: Any) -> Any:
            if isinstance(leaf, torch.device):
                return torch.device("cpu")
            if not isinstance(leaf, torch.Tensor):
                return leaf
            known = self.value(leaf)
            if known is not None or not fill:
                return known
            if differentiable:
                raise ConfigError(
                    f"{func} takes a shape from values computed from the model's activations, which a run on the "
                    "meta device does not have: this model cannot be planned"
                )
            return torch.zeros(leaf.shape, dtype=leaf.dtype)

        with _disable_current_modes():
            real_args, real_kwargs = tree_map(real, (tuple(args), kwargs))
            return func(*real_args, **real_kwargs)

    def _run_on_values(self, func: Callable, args: Sequence[Any], kwargs: dict[str, Any], differentiable: bool) -> Any:
        """An operation whose output shape (or Python value) follows values: run on the values, outputs faked."""
        device = next(leaf.device for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor))
        result = self._on_values(func, args, kwargs, fill=True, differentiable=differentiable)
        fake = tree_map(
            lambda leaf: (
                torch.empty_strided(leaf.shape, leaf.stride(), dtype=leaf.dtype, device=device)
                if isinstance(leaf, torch.Tensor)
                else leaf
            ),
            result,
        )
        self._remember(fake, result)
        return fake

    def _index_lists(self, indices: Sequence[torch.Tensor | None], differentiable: bool) -> list[torch.Tensor | None]:
        """Boolean index tensors as the index lists of their true elements (what indexing does with them)."""
        lists: list[torch.Tensor | None] = []
        for index in indices:
            if index is None or index.dtype not in (torch.bool, torch.uint8):
                lists.append(index)
                continue
            positions = self._run_on_values(aten.nonzero.default, (index,), {}, differentiable)
            columns = positions.unbind(1)
            with _disable_current_modes():
                self._remember(columns, self.value(positions).unbind(1))
            lists += columns
        return lists

    def _remember(self, fake: Any, real: Any) -> None:
        for fake_leaf, real_leaf in zip(tree_flatten(fake)[0], tree_flatten(real)[0], strict=True):
            if _is_kept(fake_leaf) and isinstance(real_leaf, torch.Tensor):
                self._values[fake_leaf] = real_leaf

    def _forget_storage(self, tensor: torch.Tensor) -> None:
        """Written from unknown values: every known tensor on that storage is unknown now."""
        storage = tensor.untyped_storage()._cdata
        for known in [known for known in self._values if known.untyped_storage()._cdata == storage]:
            del self._values[known]
