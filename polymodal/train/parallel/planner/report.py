"""The plan of a config: reading it, the ``PlanReport``, its text tables and the ``polymodal plan`` entry point.

``plan_report`` reads the experiment config (mesh degrees, precision, micro-batch, accumulation, activation
checkpointing, resharding, loss parallelism) into a ``Layout`` and builds the model on the meta device. A
transformer LM (``model_shape`` reads it) is planned with the analytic formulas of ``memory`` and
``communication``; any other model is measured (``measured``: one forward + loss of the data's largest batch on
fake tensors). Either way the memory lines and collectives go into a ``PlanReport`` together with the per-GPU
budget (``gpu_memory_gb·(1 - headroom) - reserved_gib``) that decides whether the run fits. ``format_plan``
renders the report as plain-text tables and ``plan_main`` prints it, exiting 1 when the configured run does not fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn

from polymodal.config import ConfigError, experiment_config, instantiate, load_config
from polymodal.config.schema import ExperimentConfig
from polymodal.train.optim import freeze_parameters
from polymodal.train.parallel.mesh import ParallelDims
from polymodal.train.parallel.planner.communication import (
    Collective,
    collectives,
    data_parallel_collectives,
    expert_parallel_collectives,
)
from polymodal.train.parallel.planner.experts import (
    DROPLESS_CAPACITIES,
    DroplessCapacity,
    MoELayer,
    active_params,
    check_expert_parallel,
)
from polymodal.train.parallel.planner.measured import (
    MeasuredModel,
    measure_model,
    measured_memory_lines,
    refuse_tensor_and_context_parallel,
)
from polymodal.train.parallel.planner.memory import (
    SavedTensor,
    block_saved_tensors,
    memory_lines,
    outside_saved_tensors,
)
from polymodal.train.parallel.planner.shapes import (
    FP32,
    LM_MASKS,
    Layout,
    LMMask,
    ModelShape,
    Precision,
    TokenLayout,
    Wrapper,
    model_shape,
)
from polymodal.train.parallel.planner.states import MemoryLine

GIB = 1024**3
DEFAULT_GPUS = 8


ANALYTIC = "analytic transformer LM"
MEASURED = "measured on the meta device"


@dataclass(frozen=True)
class PlanReport:
    """A plan: the model (a transformer LM's ``ModelShape``, or a ``MeasuredModel``), the run's layout, the memory
    lines and collectives; for a transformer LM also its saved tensors, one block's and those outside the blocks."""

    name: str
    model: ModelShape | MeasuredModel
    layout: Layout
    memory: tuple[MemoryLine, ...]
    collectives: tuple[Collective, ...]
    gpu_memory_gib: float
    budget_bytes: int
    block_saved: tuple[SavedTensor, ...] = ()  # one block's tensors saved for backward, per GPU
    outside_saved: tuple[SavedTensor, ...] = ()  # embedding, final norm, head and loss

    @property
    def method(self) -> str:
        """How the activations were found: ``ANALYTIC`` formulas or ``MEASURED`` on the meta device."""
        return ANALYTIC if isinstance(self.model, ModelShape) else MEASURED

    def total(self, activation_checkpointing: bool) -> int:
        return sum(line.with_ac if activation_checkpointing else line.without_ac for line in self.memory)

    def fits_with(self, activation_checkpointing: bool) -> bool:
        return self.total(activation_checkpointing) <= self.budget_bytes

    @property
    def fits(self) -> bool:
        """Whether the configured run (its own activation-checkpointing setting) fits."""
        return self.fits_with(self.layout.activation_checkpointing)


# ---------------------------------------------------------------------------------------------------- the report


def _precision(precision: str, wrapper: Wrapper) -> Precision:
    if precision == "fp32":
        return Precision(compute=FP32, param=FP32, reduce=FP32, autocast_casts=False)
    if wrapper in ("fsdp", "hsdp"):  # MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)
        return Precision(compute=2, param=2, reduce=FP32, autocast_casts=False)
    return Precision(compute=2, param=FP32, reduce=FP32, autocast_casts=True)


def _wrapper(dims: ParallelDims, world_size: int) -> Wrapper:
    """What ``train.parallel.parallelize`` applies: nothing on one process or without data/context parallel ranks."""
    if world_size == 1:
        return "none"
    if dims.strategy == "ddp":
        return "ddp"
    if dims.dp * dims.cp == 1:
        return "none"
    return "hsdp" if dims.dp_replicate > 1 else "fsdp"


def _positive_int(cfg: DictConfig, key: str) -> int:
    section, name = key.split(".")
    value = cfg.get(section, {}).get(name)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer for planning, got {value!r}")
    return value


def _check_divisible(model: ModelShape, layout: TokenLayout) -> None:
    dims = layout.dims
    if layout.seq_len % (dims.cp * dims.tp):
        raise ConfigError(
            f"data.seq_len={layout.seq_len} must be divisible by cp·tp={dims.cp * dims.tp} "
            "(context parallel chunks, then sequence-parallel shards)"
        )
    for what, count in (("num_heads", model.block.num_heads), ("num_kv_heads", model.block.num_kv_heads)):
        if count % dims.tp:
            raise ConfigError(f"experiment.distributed.tp={dims.tp} must divide {what}={count}")


def plan_report(
    cfg: DictConfig,
    gpus: int | None = None,
    gpu_memory_gb: float = 80.0,
    headroom: float = 0.10,
    reserved_gib: float = 1.0,
    mask: LMMask = "document",
    dropless: DroplessCapacity = "worst",
) -> PlanReport:
    """Plan ``cfg`` on ``gpus`` GPUs of ``gpu_memory_gb`` GiB each (default GPU count: the product of the
    configured degrees, or 8 when ``dp_shard`` is -1). A run fits when its total stays within
    ``gpu_memory_gb·(1 - headroom) - reserved_gib`` (allocator fragmentation; CUDA context and NCCL buffers).
    A transformer LM's attention mask is ``mask`` (``TokenLayout``): ``"document"`` (rows of packed documents,
    the bound) or ``"causal"`` (every row one document). MoE layers (``planner.experts``): their experts are
    sharded over ``experiment.distributed.ep`` ranks, dropless ones planned at the ``dropless`` capacity."""
    if mask not in LM_MASKS:
        raise ValueError(f"mask must be one of {LM_MASKS}, got {mask!r}")
    if dropless not in DROPLESS_CAPACITIES:
        raise ValueError(f"dropless must be one of {DROPLESS_CAPACITIES}, got {dropless!r}")
    if gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb}")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    exp = experiment_config(cfg)
    settings = exp.distributed
    if gpus is None:
        gpus = (
            DEFAULT_GPUS
            if settings.dp_shard == -1
            else (settings.dp_replicate * settings.dp_shard * settings.cp * settings.tp)
        )
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    dims = ParallelDims.from_config(settings, gpus)
    wrapper = _wrapper(dims, gpus)
    layout = Layout(
        dims=dims,
        wrapper=wrapper,
        precision=_precision(exp.precision, wrapper),
        batch_size=_positive_int(cfg, "data.batch_size"),
        grad_accum_steps=exp.grad_accum_steps,
        activation_checkpointing=exp.activation_checkpointing,
        reshard_after_forward=settings.reshard_after_forward,
        loss_parallel=settings.loss_parallel,
    )
    with torch.device("meta"):
        model = instantiate(cfg.model)
    trainable = _trainable(cfg, exp, model)
    budget = int((gpu_memory_gb * (1 - headroom) - reserved_gib) * GIB)
    report = partial(PlanReport, name=exp.name, gpu_memory_gib=gpu_memory_gb, budget_bytes=budget)
    try:
        shape = model_shape(model, trainable)
    except ConfigError:  # not a transformer LM
        shape = None
    if shape is None:
        refuse_tensor_and_context_parallel(model, dims)
        measured = measure_model(cfg, model, trainable, layout, dropless)
        check_expert_parallel(measured.moe_layers, layout)
        found = data_parallel_collectives(measured.rank_params(layout), measured.num_units, layout)
        return report(
            model=measured,
            layout=layout,
            memory=tuple(measured_memory_lines(measured, layout)),
            collectives=tuple(found + expert_parallel_collectives(measured.moe_layers, layout)),
        )
    check_expert_parallel((), layout)
    token_layout = TokenLayout(**vars(layout), seq_len=_positive_int(cfg, "data.seq_len"), mask=mask)
    _check_divisible(shape, token_layout)
    block_saved = tuple(block_saved_tensors(shape.block, token_layout))
    outside_saved = tuple(outside_saved_tensors(shape, token_layout))
    return report(
        model=shape,
        layout=token_layout,
        memory=tuple(memory_lines(shape, token_layout, block_saved, outside_saved)),
        collectives=tuple(collectives(shape, token_layout)),
        block_saved=block_saved,
        outside_saved=outside_saved,
    )


def _trainable(cfg: DictConfig, exp: ExperimentConfig, model: nn.Module) -> set[int]:
    """The ids of the parameters the configured optimizer trains, from the optimizer built over the meta-device
    model once ``experiment.freeze`` is applied (``build_optimizer`` leaves frozen ones out)."""
    try:
        freeze_parameters(model, exp.freeze)
    except ValueError as error:
        raise ConfigError(f"experiment.freeze: {error}") from error
    optimizer = instantiate(cfg.optim.optimizer, model=model)
    if type(optimizer) is not torch.optim.AdamW or any(group["amsgrad"] for group in optimizer.param_groups):
        raise ConfigError(f"the planner counts AdamW's state; optim.optimizer builds {type(optimizer).__name__}")
    return {id(param) for group in optimizer.param_groups for param in group["params"]}


def _billions(count: int) -> str:
    """``6.74 B``, ``0.00583 B``: three significant digits, so that small models do not read as 0."""
    return f"{count / 1e9:.3g} B"


def _capacity(layer: MoELayer) -> str:
    if layer.dropless is None:
        return f"capacity_factor {layer.capacity_factor:g}"
    rule = "worst case, all tokens to one expert" if layer.dropless == "worst" else "balanced load"
    return f"dropless, planned at {rule}"


def _experts(model: MeasuredModel, layout: Layout) -> list[str]:
    """The MoE lines of the header: parameters a token meets, the experts' share, capacities, expert parallelism."""
    if not model.moe_layers:
        return []
    layers, total = model.moe_layers, model.num_params
    experts = sum(layer.expert_params for layer in layers)
    kinds = sorted(
        {
            f"{layer.num_experts} experts top-{layer.top_k}, C={layer.capacity} slots ({_capacity(layer)})"
            for layer in layers
        }
    )
    ep = layout.expert_parallel
    sharding = f"experts sharded over ep={ep} ranks" if ep > 1 else "experts not sharded (ep=1)"
    return [
        f"mixture of experts: {len(layers)} MoE layer(s): {'; '.join(kinds)}",
        f"  {_billions(active_params(total, layers))} parameters active per token of {_billions(total)}; "
        f"experts hold {_billions(experts)} ({100 * experts / total:.1f}%); {sharding}",
    ]


def _gib(size: float) -> str:
    return f"{size / GIB:9.2f}"


def format_plan(report: PlanReport) -> str:
    """The report as plain-text tables: memory per GPU (without / with activation checkpointing), the verdict,
    and the collectives of one optimizer step."""
    layout, model, dims = report.layout, report.model, report.layout.dims
    in_units = _billions(sum(math.prod(p.shape) for p in model.params if p.in_block))
    if isinstance(model, ModelShape):
        what = f"{_billions(model.num_params)} parameters ({in_units} in {model.depth} blocks), "
        what += f"vocabulary {model.vocab_size}"
        rows = "rows of packed documents" if layout.mask == "document" else "one document per row"
        batch = f"{layout.batch_size} x {layout.seq_len} tokens, {rows}"
    else:
        units = f"{in_units} in {model.num_units} FSDP units" if model.num_units else "no FSDP units"
        what = f"{model.kind}, {_billions(model.num_params)} parameters ({units})"
        batch = model.batch
    precision = (
        "fp32"
        if layout.precision.compute == FP32
        else (
            "bf16 autocast over fp32 params"
            if layout.precision.autocast_casts
            else "bf16 params (FSDP mixed precision)"
        )
    )
    lines = [
        f"plan for {report.name} ({report.method}): {what}",
        f"mesh: {dims.world_size} GPU(s), {layout.wrapper} (dp_replicate={dims.dp_replicate} dp_shard={dims.dp_shard} "
        f"cp={dims.cp} tp={dims.tp}), reshard_after_forward={layout.reshard_after_forward}",
        f"micro-batch: {batch}",
        f"{layout.grad_accum_steps} accumulation step(s), {precision}",
        *(_experts(model, layout) if isinstance(model, MeasuredModel) else []),
        "",
        f"{'memory per GPU (GiB)':40s} {'AC off':>9s} {'AC on':>9s}  note",
    ]
    for line in report.memory:
        lines.append(f"  {line.category:38s} {_gib(line.without_ac)} {_gib(line.with_ac)}  {line.note}")
    budget = _gib(report.budget_bytes)
    verdicts = ["yes" if report.fits_with(ac) else "NO" for ac in (False, True)]
    configured = "on" if layout.activation_checkpointing else "off"
    lines += [
        f"  {'total':38s} {_gib(report.total(False))} {_gib(report.total(True))}",
        f"  {'budget':38s} {budget} {budget}  {report.gpu_memory_gib:g} GiB less headroom and CUDA context",
        f"  {'fits':38s} {verdicts[0]:>9s} {verdicts[1]:>9s}  configured: activation checkpointing {configured}",
        "",
        f"{'collectives per optimizer step':36s} {'group':>12s} {'size':>5s} {'calls':>7s} {'GiB sent/GPU':>13s}",
    ]
    for c in report.collectives:
        lines.append(
            f"  {c.name:34s} {c.group:>12s} {c.group_size:5d} {c.calls_per_step:7d} {c.bytes_per_step / GIB:13.3f}"
        )
    if not report.collectives:
        lines.append("  none (a single GPU, or no group larger than one rank)")
    lines.append(f"\nverdict: {'fits' if report.fits else 'does NOT fit'} in {report.gpu_memory_gib:g} GiB per GPU")
    return "\n".join(lines)


def plan_main(
    config_path: str,
    overrides: Sequence[str] = (),
    gpus: int | None = None,
    gpu_memory_gb: float = 80.0,
    mask: LMMask = "document",
    dropless: DroplessCapacity = "worst",
) -> int:
    """``polymodal plan``: print the plan; exit status 0 when the configured run fits, 1 when it does not."""
    report = plan_report(
        load_config(config_path, overrides),
        gpus=gpus,
        gpu_memory_gb=gpu_memory_gb,
        mask=mask,
        dropless=dropless,
    )
    print(format_plan(report))
    return 0 if report.fits else 1
