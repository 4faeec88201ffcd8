"""The plan of a model the analytic formulas do not describe: states from its meta-device parameters, activations
and the step's peak measured in one micro-step (forward, loss, backward) on fake tensors (``fake_run``).

The micro-batch is the data class's ``largest_batch`` (:mod:`polymodal.data.largest`), made from the data config
alone. FSDP units are the model's ``fsdp_units()`` (else its transformer blocks), as the trainer shards and
checkpoints them (``train.parallel.plans.fsdp_units``). Tensor and context parallelism are refused: the trainer
needs a model's ``parallel_plan()`` for them, and the planner models them for transformer LMs only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn

from polymodal.config import ConfigError, instantiate
from polymodal.config.aliases import current_target
from polymodal.data.largest import LargestBatch
from polymodal.train.parallel.mesh import ParallelDims
from polymodal.train.parallel.planner.experts import DroplessCapacity, MoELayer, MoELayers, expert_parallel_params
from polymodal.train.parallel.planner.fake_run import StepMemory, measure_step
from polymodal.train.parallel.planner.shapes import FP32, Layout, ParamShape, param_shapes
from polymodal.train.parallel.planner.states import MemoryLine, same, state_lines, unit_numels
from polymodal.train.parallel.plans import fsdp_units, plan_for


@dataclass(frozen=True)
class MeasuredModel:
    """A model planned by measurement: its class, parameters, FSDP units, buffers, what one micro-batch saves
    for backward, and what that micro-batch is (for people); its MoE layers as planned and the names of their
    expert parameters."""

    kind: str
    params: tuple[ParamShape, ...]
    num_units: int
    buffer_bytes: int
    step: StepMemory
    batch: str
    moe_layers: tuple[MoELayer, ...] = ()
    expert_names: frozenset[str] = frozenset()

    @property
    def num_params(self) -> int:
        return sum(math.prod(param.shape) for param in self.params)

    def rank_params(self, layout: Layout) -> tuple[ParamShape, ...]:
        """The parameters as one rank holds them before data parallelism: experts cut by expert parallelism."""
        return expert_parallel_params(self.params, self.expert_names, layout.expert_parallel)


def refuse_tensor_and_context_parallel(model: nn.Module, dims: ParallelDims) -> None:
    """A one-line ConfigError for ``tp > 1`` or ``cp > 1``: the trainer's words when the model has no plan for
    them, the planner's limit when it has one."""
    name, plan = type(model).__name__, plan_for(model)
    for degree, key, kind, planned in (
        (dims.tp, "tp", "tensor", plan.tensor_parallel is not None),
        (dims.cp, "cp", "context", bool(plan.sequence_keys)),
    ):
        if degree > 1:
            reason = (
                f"the planner models {kind} parallelism for transformer LMs only"
                if planned
                else f"no {kind}-parallel plan for {name}"
            )
            raise ConfigError(f"{reason}; set experiment.distributed.{key}=1")


def largest_batch(cfg: DictConfig, device: str) -> LargestBatch:
    """The data class's ``largest_batch`` on ``device``, from the ``data:`` node (see :mod:`polymodal.data.largest`)."""
    target = cfg.get("data", {}).get("_target_")
    if target is None:
        raise ConfigError("data._target_ is missing: the planner makes the micro-batch with the data class")
    target = current_target(target)
    try:
        data_class = get_class(target)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"data._target_: cannot import {target}: {error}") from error
    if not hasattr(data_class, "largest_batch"):
        raise ConfigError(f"{target} has no largest_batch(): the planner cannot make a micro-batch of its data")
    return instantiate(cfg.data, _target_=f"{target}.largest_batch", device=device)


def measure_model(
    cfg: DictConfig, model: nn.Module, trainable: set[int], layout: Layout, dropless: DroplessCapacity = "worst"
) -> MeasuredModel:
    """Read the states of ``model`` (built on the meta device; ``trainable``: ids of the parameters the optimizer
    trains), then measure one micro-step of the largest micro-batch on fake tensors, as the trainer runs it, its
    dropless MoE layers at the ``dropless`` capacity (:mod:`~polymodal.train.parallel.planner.experts`)."""
    units = fsdp_units(model)
    params = param_shapes(model, units, trainable)
    moe = MoELayers(model, dropless)
    expert_names = moe.expert_parameter_names(model)
    buffer_bytes = sum({b.untyped_storage()._cdata: b.untyped_storage().nbytes() for b in model.buffers()}.values())
    kind = type(model).__name__
    made: list[LargestBatch] = []

    def batch(device: str) -> dict:
        made.append(largest_batch(cfg, device))
        return made[-1].batch

    precision, sharded = layout.precision, layout.wrapper in ("fsdp", "hsdp")
    try:
        step = measure_step(
            model,
            units,
            objective=lambda: instantiate(cfg.loss),
            batch=batch,
            param_dtype=torch.bfloat16 if sharded and precision.param != FP32 else None,
            autocast=precision.compute != FP32,
        )
    except ConfigError:
        raise
    except (ValueError, RuntimeError, NotImplementedError) as error:  # the model refuses the batch, no meta kernel
        reason = " ".join(str(error).split())
        raise ConfigError(f"measuring {kind} on the meta device failed: {type(error).__name__}: {reason}") from error
    return MeasuredModel(kind, params, len(units), buffer_bytes, step, made[-1].description, moe.layers(), expert_names)


def _unsharded_gradients(params: Sequence[ParamShape], layout: Layout) -> int:
    """FSDP2 reduce-scatters a unit's gradients when its backward is done, from unsharded gradients in the
    parameter dtype copied to the reduce dtype. The root's (heads, embeddings) are reduced at the end of backward,
    so they are held, in the parameter dtype, while the units' are reduced one by one. (Without units the root's
    are reduced like a unit's.)"""
    precision = layout.precision
    root, units = unit_numels([p for p in params if p.trainable], layout)
    if not units:
        return (precision.param + precision.reduce) * root
    return precision.param * root + (precision.param + precision.reduce) * units[0]


def measured_memory_lines(model: MeasuredModel, layout: Layout) -> list[MemoryLine]:
    """The memory lines of a measured model, each with and without activation checkpointing."""
    params = model.rank_params(layout)
    lines = state_lines(params, layout)
    if model.buffer_bytes:
        lines.append(same("buffers", model.buffer_bytes, "whole on every GPU: FSDP does not shard buffers"))
    if layout.wrapper in ("fsdp", "hsdp"):
        unsharded = _unsharded_gradients(params, layout)
        lines.append(same("unsharded gradients (FSDP)", unsharded, "the root's, and one unit's being reduced"))
    saved = model.step.saved
    if model.num_units:
        lines.append(
            MemoryLine(
                "activations: units",
                saved.in_units,
                saved.unit_inputs + saved.recompute,
                f"{model.num_units} units; AC: their inputs + one recomputed",
            )
        )
    outside = "embeddings, heads, loss" if model.num_units else "no units: activation checkpointing wraps nothing"
    lines += [
        same("activations: outside units", saved.outside, outside),
        same("batch", saved.batch, "for the whole micro-step"),
        same("temporaries at the peak", model.step.temporaries, "outputs, gradients in flight; measured without AC"),
    ]
    return lines
