"""Models composed from blocks that read and write one shared ``data_dict``.

A batch is a ``dict[str, Any]``. Every model part, loss and metric is a :class:`ReadWriteBlock` that declares the
keys it reads and the keys it writes; it takes the dict, adds its outputs and returns it. Composites
(:class:`MetaModel`, :class:`ModelSeries`) are ordered containers of blocks, so a recipe is a rearrangement of
parts in a config file.

Declarations are checked where it costs nothing and enforced where it helps: containers derive their own keys from
their children, and inside :func:`checking_keys` (the trainer's ``--debug`` mode) every block sees the dict through
a guard that raises on reading a key it did not declare, reading a declared key nobody wrote, or writing a key it
did not declare — the error names the block and the key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

DataDict = dict[str, Any]

_CHECK_KEYS: ContextVar[bool] = ContextVar("polymodal_check_keys", default=False)


class KeyDeclarationError(KeyError):
    """A block touched a data_dict key against its declaration (raised only while checking keys)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


@contextlib.contextmanager
def checking_keys(enabled: bool = True) -> Iterator[None]:
    """Within this context every block call inside a container is checked against the block's declared keys."""
    token = _CHECK_KEYS.set(enabled)
    try:
        yield
    finally:
        _CHECK_KEYS.reset(token)


def _as_keys(keys: str | Sequence[str] | None) -> tuple[str, ...]:
    if keys is None:
        return ()
    if isinstance(keys, str):
        return (keys,)
    return tuple(keys)


class ReadWriteBlock(nn.Module):
    """A model part over the data_dict: ``forward(data) -> data`` reading ``read_keys`` and writing ``write_keys``."""

    def __init__(self, read_keys: str | Sequence[str] | None = None, write_keys: str | Sequence[str] | None = None):
        super().__init__()
        self.read_keys = _as_keys(read_keys)
        self.write_keys = _as_keys(write_keys)

    def forward(self, data: DataDict) -> DataDict:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(data) -> data")

    def describe(self) -> str:
        return f"{type(self).__name__}(reads={list(self.read_keys)}, writes={list(self.write_keys)})"


class _GuardedDict(MutableMapping):
    """The view of a data_dict that one block gets while keys are checked."""

    def __init__(self, data: MutableMapping[str, Any], block: ReadWriteBlock, name: str):
        self._data = data
        self._block = block
        self._name = name

    def _where(self) -> str:
        return f"block '{self._name}' ({self._block.describe()})"

    def __getitem__(self, key: str) -> Any:
        if key not in self._block.read_keys and key not in self._block.write_keys:
            raise KeyDeclarationError(f"{self._where()} read undeclared key '{key}'")
        if key not in self._data:
            raise KeyDeclarationError(
                f"{self._where()} reads '{key}', which is missing from the data_dict (present: {sorted(self._data)})"
            )
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._block.write_keys:
            raise KeyDeclarationError(f"{self._where()} wrote undeclared key '{key}'")
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._block.write_keys:
            raise KeyDeclarationError(f"{self._where()} deleted undeclared key '{key}'")
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def call_block(block: nn.Module, data: DataDict, name: str | None = None, **kwargs: Any) -> Any:
    """Call ``block`` on ``data``; while keys are checked, a :class:`ReadWriteBlock` sees a guarded view."""
    if _CHECK_KEYS.get() and isinstance(block, ReadWriteBlock) and not isinstance(block, _Composite):
        result = block(_GuardedDict(data, block, name or type(block).__name__), **kwargs)
        return data if isinstance(result, _GuardedDict) else result
    return block(data, **kwargs)


class _Composite(ReadWriteBlock):
    """A container whose declared keys are derived from its children (reads: what no earlier child wrote)."""

    def _derive_keys(self, children: Sequence[nn.Module]) -> None:
        reads: list[str] = []
        writes: list[str] = []
        for child in children:
            for key in getattr(child, "read_keys", ()):
                if key not in writes and key not in reads:
                    reads.append(key)
            for key in getattr(child, "write_keys", ()):
                if key not in writes:
                    writes.append(key)
        self.read_keys, self.write_keys = tuple(reads), tuple(writes)


def _as_block(part: nn.Module | Sequence[nn.Module]) -> nn.Module:
    if isinstance(part, nn.Module):
        return part
    return BlockList(list(part))


class BlockList(_Composite):
    """Blocks run one after another in one slot."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self._derive_keys(list(self.blocks))

    def forward(self, data: DataDict) -> DataDict:
        for index, block in enumerate(self.blocks):
            data = call_block(block, data, name=f"{index}:{type(block).__name__}")
        return data


class MetaModel(_Composite):
    """preprocessor → trunk → postprocessor → head; each slot a block, a list of blocks, a MetaModel or None."""

    SLOTS = ("preprocessor", "trunk", "postprocessor", "head")

    def __init__(
        self,
        preprocessor: nn.Module | Sequence[nn.Module] | None = None,
        trunk: nn.Module | Sequence[nn.Module] | None = None,
        postprocessor: nn.Module | Sequence[nn.Module] | None = None,
        head: nn.Module | Sequence[nn.Module] | None = None,
    ):
        super().__init__()
        parts = dict(preprocessor=preprocessor, trunk=trunk, postprocessor=postprocessor, head=head)
        for slot, part in parts.items():
            setattr(self, slot, None if part is None else _as_block(part))
        self._derive_keys([part for part in self.parts().values()])

    def parts(self) -> dict[str, nn.Module]:
        return {slot: getattr(self, slot) for slot in self.SLOTS if getattr(self, slot) is not None}

    def forward(self, data: DataDict) -> DataDict:
        for slot, part in self.parts().items():
            data = call_block(part, data, name=slot)
        return data


class ModelSeries(_Composite):
    """Named models run in order; ``forward(data, only="text_tower")`` runs one of them alone."""

    def __init__(self, models: Mapping[str, nn.Module], order: Sequence[str] | None = None):
        super().__init__()
        self.models = nn.ModuleDict(dict(models))
        self.order = list(order) if order is not None else list(self.models.keys())
        unknown = [name for name in self.order if name not in self.models]
        if unknown:
            raise ValueError(f"ModelSeries order names unknown models {unknown}; known: {list(self.models)}")
        self._derive_keys([self.models[name] for name in self.order])

    def forward(self, data: DataDict, only: str | None = None) -> DataDict:
        if only is not None:
            if only not in self.models:
                raise KeyError(f"no model named '{only}' in this series; known: {list(self.models)}")
            return call_block(self.models[only], data, name=only)
        for name in self.order:
            data = call_block(self.models[name], data, name=name)
        return data


class ModuleBlock(ReadWriteBlock):
    """Adapts any ``nn.Module``: ``data[write_keys] = module(*data[read_keys])`` (tuples fill several keys)."""

    def __init__(self, module: nn.Module, read_keys: str | Sequence[str], write_keys: str | Sequence[str]):
        super().__init__(read_keys, write_keys)
        if not self.read_keys or not self.write_keys:
            raise ValueError("ModuleBlock needs at least one read key and one write key")
        self.module = module

    def forward(self, data: DataDict) -> DataDict:
        outputs = self.module(*(data[key] for key in self.read_keys))
        if len(self.write_keys) == 1:
            outputs = (outputs,)
        if len(outputs) != len(self.write_keys):
            raise ValueError(
                f"{type(self.module).__name__} returned {len(outputs)} outputs for write keys {list(self.write_keys)}"
            )
        for key, value in zip(self.write_keys, outputs, strict=True):
            data[key] = value
        return data


class Objective(ReadWriteBlock):
    """A loss or metric block: ``forward(data) -> (scalar, {name: value})``; values stay on device."""

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement forward(data) -> (loss, metrics)")


class WeightedObjectives(Objective):
    """A weighted sum of named objectives; each one's value is reported as ``<name>`` in the metrics."""

    def __init__(self, objectives: Mapping[str, Objective], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not objectives:
            raise ValueError("WeightedObjectives needs at least one objective")
        self.objectives = nn.ModuleDict(dict(objectives))
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.objectives}
        unknown = set(weights or {}) - set(self.objectives)
        if unknown:
            raise ValueError(f"weights given for unknown objectives {sorted(unknown)}")
        reads: list[str] = []
        for objective in self.objectives.values():
            reads += [key for key in objective.read_keys if key not in reads]
        self.read_keys = tuple(reads)

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros(())
        metrics: dict[str, torch.Tensor] = {}
        for name, objective in self.objectives.items():
            loss, values = call_block(objective, data, name=name)
            metrics[name] = loss.detach()
            metrics.update({f"{name}/{key}": value for key, value in values.items()})
            total = total.to(loss.device) + self.weights[name] * loss
        return total, metrics
