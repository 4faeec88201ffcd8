"""The training state every plan holds, from the parameter shapes alone: parameters, gradients, AdamW state, and
what the data-parallel wrapper adds (DDP's gradient buckets, FSDP's gathered parameters).

Each parameter is first cut by tensor parallelism (``tp_local_shape``), then sharded by FSDP2 over the shard group
(``fsdp_shard_numel``: rank 0 holds the largest shard); an expert-parallel slice of experts over the ranks beside
``ep`` (``sharded_numel``). The trainer keeps fp32 master weights whatever the
precision; gradients and optimizer state exist for trainable parameters only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from polymodal.train.parallel.planner.shapes import FP32, Layout, ParamShape, _numel, tp_local_shape


@dataclass(frozen=True)
class MemoryLine:
    category: str
    without_ac: int
    with_ac: int
    note: str = ""


def same(category: str, size: int, note: str = "") -> MemoryLine:
    """A line that activation checkpointing does not change."""
    return MemoryLine(category, size, size, note)


def local_numel(params: Sequence[ParamShape], layout: Layout, group: int = 1) -> int:
    """Elements this rank holds of ``params``: its tensor-parallel slice, sharded over ``group`` ranks."""
    return _numel([tp_local_shape(param, layout.dims.tp) for param in params], group)


def sharded_numel(params: Sequence[ParamShape], layout: Layout) -> int:
    """Elements this rank holds of ``params`` under its data-parallel wrapper: experts sharded over
    ``expert_shard_group`` ranks, everything else over ``shard_group``."""
    experts = [param for param in params if param.expert]
    others = [param for param in params if not param.expert]
    return local_numel(others, layout, layout.shard_group) + local_numel(experts, layout, layout.expert_shard_group)


def unit_numels(params: Sequence[ParamShape], layout: Layout) -> tuple[int, list[int]]:
    """Elements of this rank's tensor-parallel slice in the FSDP root and in each unit, largest unit first."""
    units: dict[int, list[ParamShape]] = defaultdict(list)
    for param in params:
        if param.unit is not None:
            units[param.unit].append(param)
    root = local_numel([param for param in params if param.unit is None], layout)
    return root, sorted((local_numel(members, layout) for members in units.values()), reverse=True)


def state_lines(params: Sequence[ParamShape], layout: Layout, unit: str = "unit") -> list[MemoryLine]:
    """Parameters, gradients, AdamW state (``exp_avg``, ``exp_avg_sq`` and a 4-byte ``step`` per trainable
    tensor), then DDP's buckets or FSDP's gathered parameters (the root for the whole step, plus the units
    gathered at once: two with ``reshard_after_forward``, one in use and one prefetched, else all of them).
    ``unit`` names a unit in the notes ("block")."""
    group, tp, ep = layout.shard_group, layout.dims.tp, layout.expert_parallel
    trainable = [param for param in params if param.trainable]
    held = sharded_numel(params, layout)
    trained = sharded_numel(trainable, layout)
    how = f"sharded over dp_shard·cp={group}" if group > 1 else "replicated" if layout.wrapper == "ddp" else "whole"
    if ep > 1:
        how += f", experts over ep={ep} × dp_shard_mod_ep·cp={layout.expert_shard_group}"
    if tp > 1:
        how += f", tp={tp}"
    sharded = layout.wrapper in ("fsdp", "hsdp")
    # FSDP2 without gradient sync keeps the accumulated gradients unsharded (in the reduce dtype) until the last
    # micro-step reduce-scatters them; their shards replace them unit by unit, so the unsharded size is the peak.
    accumulates_unsharded = sharded and layout.grad_accum_steps > 1
    lines = [
        same("parameters", FP32 * held, f"fp32, {how}"),
        same(
            "gradients",
            FP32 * local_numel(trainable, layout),
            "fp32, unsharded: accumulated without sync between micro-steps",
        )
        if accumulates_unsharded
        else same("gradients", FP32 * trained, f"fp32, {how}"),
        same("optimizer state (AdamW)", 2 * FP32 * trained + FP32 * len(trainable), "exp_avg, exp_avg_sq fp32, step"),
    ]
    if layout.wrapper == "ddp":
        lines.append(
            same("DDP gradient buckets", FP32 * local_numel(trainable, layout), "gradient_as_bucket_view=False")
        )
    if sharded:
        root, units = unit_numels(params, layout)
        alive = units[: min(2, len(units))] if layout.reshard_after_forward else units
        gathered = f"root + {len(alive)} {unit}(s)" if alive else "root"
        lines.append(
            same("gathered parameters (FSDP)", layout.precision.param * (root + sum(alive)), f"{gathered} unsharded")
        )
    return lines
