"""What the trainer asks of a model: the one protocol every model, of the engine or of a family, may implement.

Every method is optional; the trainer checks for each and falls back as documented. The trainer never looks a
model up by its class, so a new family's model plugs in by implementing what it needs here.

``initialize_weights()``
    Re-initialise every parameter in place. Needed for ``experiment.meta_init`` (the model is built on the meta
    device, materialised, then initialised identically on every rank).
``train_flops(batch) -> float``
    Forward + backward FLOPs of one training step on ``batch`` (after the forward pass), by the conventions of
    :mod:`polymodal.models.flops`. Without it the trainer counts them with ``FlopCounterMode`` on a fake-tensor twin
    of the model, once per batch shape (``train/flop_count.py``); a model whose forward fake tensors cannot run
    logs no MFU.
``parallel_plan() -> ParallelPlan``
    Where tensor parallelism splits the model and which batch keys context parallelism splits along the sequence.
    Without it a run with ``tp > 1`` or ``cp > 1`` is refused with a clear error.
``fsdp_units() -> list[nn.Module]``
    The sub-modules FSDP2 shards (and activation checkpointing wraps) one by one. Without it every
    :class:`~polymodal.models.layers.block.TransformerBlock` and
    :class:`~polymodal.models.layers.cross_attention.CrossAttentionBlock` is a unit.

The plan is a description (module paths), not code: the model knows nothing of DTensors or process groups; the
engine's ``train/parallel/plans.py`` turns it into torch's tensor-parallel styles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from polymodal.models.meta import DataDict


@dataclass(frozen=True)
class DecoderLayout:
    """Where a decoder's parts are (``get_submodule`` paths) for Megatron-style tensor + sequence parallelism.

    ``blocks`` is a ``ModuleList`` of :class:`~polymodal.models.layers.block.TransformerBlock`; ``embedding`` an
    ``nn.Embedding`` whose output enters the first block; ``final_norm`` the norm after the last block; ``head`` the
    ``nn.Linear`` to the vocabulary (tied to the embedding or not).
    """

    blocks: str
    embedding: str
    final_norm: str
    head: str


@dataclass(frozen=True)
class ParallelPlan:
    tensor_parallel: DecoderLayout | None = None
    sequence_keys: tuple[str, ...] = ()  # batch keys split along dim 1 under context parallelism


@runtime_checkable
class TrainableModel(Protocol):
    """The full protocol (module docstring); a model implements the parts it needs."""

    def initialize_weights(self) -> None: ...

    def train_flops(self, batch: DataDict) -> float: ...

    def parallel_plan(self) -> ParallelPlan: ...

    def fsdp_units(self) -> list[nn.Module]: ...
