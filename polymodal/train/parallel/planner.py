"""``polymodal plan``: the per-GPU memory and per-step communication of a config on a device mesh, with no GPU.

The model is built on the meta device, so parameter counts are exact and cost no memory. Activation bytes come
from an explicit list of the tensors our transformer block saves for backward (``block_saved_tensors``), which
``tests/train/test_planner.py`` checks against autograd's saved-tensor hooks. ``docs/planning.md`` derives every
formula and compares predictions with measurements.

Conventions: bytes are per GPU; collective bytes are what one GPU *sends* with ring algorithms (all-gather and
reduce-scatter of a full buffer of ``N`` bytes over ``n`` ranks: ``(n-1)/n·N``; all-reduce: ``2·(n-1)/n·N``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from omegaconf import DictConfig
from torch import nn

from polymodal.config import ConfigError, experiment_config, instantiate, load_config
from polymodal.models.layers.attention import Attention
from polymodal.models.layers.block import TransformerBlock
from polymodal.models.layers.mlp import SwiGLU
from polymodal.models.layers.norm import RMSNorm
from polymodal.models.parts import LinearHead
from polymodal.train.parallel.mesh import ParallelDims

GIB = 1024**3
FP32 = 4
INT64 = 8
DEFAULT_GPUS = 8

Wrapper = Literal["none", "ddp", "fsdp", "hsdp"]


@dataclass(frozen=True)
class BlockShape:
    """The widths of one transformer block (every block of the model has the same)."""

    dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_hidden: int
    qk_norm: bool


@dataclass(frozen=True)
class ParamShape:
    """One distinct parameter: its shape, the dim tensor parallelism splits (None: replicated), whether it
    lives in a transformer block (an FSDP unit) and whether a matmul uses it (autocast keeps a bf16 copy)."""

    name: str
    shape: tuple[int, ...]
    tp_dim: int | None
    in_block: bool
    matmul: bool


@dataclass(frozen=True)
class ModelShape:
    block: BlockShape
    depth: int
    vocab_size: int
    params: tuple[ParamShape, ...]

    @property
    def num_params(self) -> int:
        return sum(math.prod(param.shape) for param in self.params)


@dataclass(frozen=True)
class Precision:
    """Bytes per element: ``compute`` of matmul outputs, ``param`` of parameters as the forward sees them (and so
    of the residual stream, which starts as the embedding's output), ``reduce`` of gradient reductions.
    ``autocast_casts``: fp32 parameters under bf16 autocast, so every linear saves a bf16 copy of its input."""

    compute: int
    param: int
    reduce: int
    autocast_casts: bool


@dataclass(frozen=True)
class Layout:
    """Everything the formulas need about a run: the mesh, the data-parallel wrapper, the micro-batch."""

    dims: ParallelDims
    wrapper: Wrapper
    precision: Precision
    batch_size: int
    seq_len: int
    grad_accum_steps: int
    activation_checkpointing: bool
    reshard_after_forward: bool
    loss_parallel: bool

    @property
    def tokens(self) -> int:
        """Tokens of this rank's micro-batch (context parallelism splits the sequence)."""
        return self.batch_size * self.seq_len // self.dims.cp

    @property
    def sequence_parallel_tokens(self) -> int:
        """Tokens of this rank in sequence-parallel regions (norms, residual stream) under tensor parallelism."""
        return self.tokens // self.dims.tp

    @property
    def shard_group(self) -> int:
        """Ranks that one FSDP unit is sharded over (1 when parameters are not sharded)."""
        return self.dims.dp_shard * self.dims.cp if self.wrapper in ("fsdp", "hsdp") else 1


@dataclass(frozen=True)
class SavedTensor:
    name: str
    bytes: int


@dataclass(frozen=True)
class MemoryLine:
    category: str
    without_ac: int
    with_ac: int
    note: str = ""


@dataclass(frozen=True)
class Collective:
    name: str
    group: str
    group_size: int
    calls_per_step: int
    bytes_per_step: int  # sent by one GPU per optimizer step


@dataclass(frozen=True)
class PlanReport:
    name: str
    model: ModelShape
    layout: Layout
    block_saved: tuple[SavedTensor, ...]  # one block's tensors saved for backward, per GPU
    outside_saved: tuple[SavedTensor, ...]  # embedding, final norm, head and loss
    memory: tuple[MemoryLine, ...]
    collectives: tuple[Collective, ...]
    gpu_memory_gib: float
    budget_bytes: int

    def total(self, activation_checkpointing: bool) -> int:
        return sum(line.with_ac if activation_checkpointing else line.without_ac for line in self.memory)

    def fits_with(self, activation_checkpointing: bool) -> bool:
        return self.total(activation_checkpointing) <= self.budget_bytes

    @property
    def fits(self) -> bool:
        """Whether the configured run (its own activation-checkpointing setting) fits."""
        return self.fits_with(self.layout.activation_checkpointing)


# ---------------------------------------------------------------------------------------------------- model shape


def _tensor_parallel_dims(model: nn.Module) -> dict[int, int]:
    """Parameter id -> the dim tensor parallelism splits, following ``train.parallel.plans``: q/k/v and fc1/fc3
    and the LM head column-wise (dim 0 of the weight), o_proj and fc2 row-wise (dim 1), the embedding over the
    vocabulary (dim 0). Everything else (norms) is replicated."""
    split: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, Attention):
            for linear in (module.q_proj, module.k_proj, module.v_proj):
                split.update({id(p): 0 for p in linear.parameters()})
            split[id(module.o_proj.weight)] = 1
        elif isinstance(module, SwiGLU):
            for linear in (module.fc1, module.fc3):
                split.update({id(p): 0 for p in linear.parameters()})
            split[id(module.fc2.weight)] = 1
        elif isinstance(module, LinearHead):
            split.update({id(p): 0 for p in module.proj.parameters()})
        elif isinstance(module, nn.Embedding):
            split[id(module.weight)] = 0
    return split


def _block_shape(block: TransformerBlock, where: str) -> BlockShape:
    attn, mlp = block.attn, block.mlp
    if not isinstance(attn, Attention) or not isinstance(mlp, SwiGLU):
        raise ConfigError(
            f"{where}: the planner models Attention + SwiGLU blocks, got {type(attn).__name__} + {type(mlp).__name__}"
        )
    for norm_name in ("attn_norm", "mlp_norm"):
        if not isinstance(getattr(block, norm_name), RMSNorm):
            raise ConfigError(
                f"{where}.{norm_name}: the planner models RMSNorm, got {type(getattr(block, norm_name)).__name__}"
            )
    return BlockShape(
        dim=attn.q_proj.in_features,
        num_heads=attn.num_heads,
        num_kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim,
        mlp_hidden=mlp.hidden_dim,
        qk_norm=attn.q_norm is not None,
    )


def model_shape(model: nn.Module) -> ModelShape:
    """Read the block widths, vocabulary and every distinct parameter (tied weights once) of a built model."""
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no TransformerBlock: the planner models transformer LMs")
    shapes = {_block_shape(block, name) for name, block in blocks}
    if len(shapes) > 1:
        raise ConfigError(
            f"{type(model).__name__}: blocks differ in shape ({len(shapes)} kinds); the planner needs identical blocks"
        )
    heads = [m for m in model.modules() if isinstance(m, LinearHead)]
    if len(heads) != 1:
        raise ConfigError(f"{type(model).__name__}: expected one LinearHead (the LM head), found {len(heads)}")

    in_block = {id(p) for _, block in blocks for p in block.parameters()}
    matmul = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    tp_dims = _tensor_parallel_dims(model)
    params = tuple(
        ParamShape(name, tuple(p.shape), tp_dims.get(id(p)), id(p) in in_block, id(p) in matmul)
        for name, p in model.named_parameters()
    )
    return ModelShape(shapes.pop(), len(blocks), heads[0].proj.out_features, params)


def tp_local_shape(param: ParamShape, tp: int) -> tuple[int, ...]:
    """The shape one tensor-parallel rank holds."""
    if param.tp_dim is None or tp == 1:
        return param.shape
    size = param.shape[param.tp_dim]
    if size % tp:
        raise ConfigError(f"experiment.distributed.tp={tp} does not divide {param.name} dim {param.tp_dim} ({size})")
    local = list(param.shape)
    local[param.tp_dim] = size // tp
    return tuple(local)


def fsdp_shard_numel(shape: tuple[int, ...], group: int) -> int:
    """Elements one rank holds of a parameter FSDP2 shards over ``group`` ranks: dim 0 is split into
    ``ceil(dim0 / group)`` rows per rank (the last ranks are padded)."""
    if not shape:
        return 1
    return math.ceil(shape[0] / group) * math.prod(shape[1:])


# ---------------------------------------------------------------------------------------------------- activations


def _rms_norm_saved(prefix: str, width: int, rows: int, layout: Layout) -> list[SavedTensor]:
    """``F.rms_norm`` on an fp32 copy of its input saves that input, 1/rms and the normalised input (all fp32);
    with non-fp32 parameters also the fp32 copy of the weight. Its output is saved by whatever consumes it."""
    saved = [
        SavedTensor(f"{prefix}: input in fp32", FP32 * width * rows),
        SavedTensor(f"{prefix}: 1/rms (fp32)", FP32 * rows),
        SavedTensor(f"{prefix}: normalised input (fp32)", FP32 * width * rows),
    ]
    if layout.precision.param != FP32:
        saved.append(SavedTensor(f"{prefix}: fp32 copy of the weight", FP32 * width))
    return saved


def _norm_output(prefix: str, width: int, consumers: int, layout: Layout) -> SavedTensor:
    """The norm output as its linears save it: gathered over the sequence under TP, and under autocast with
    fp32 parameters cast to bf16 separately by each of the ``consumers`` linears."""
    copies = consumers if layout.precision.autocast_casts else 1
    return SavedTensor(f"{prefix}: output (linear input)", layout.precision.compute * width * layout.tokens * copies)


def block_saved_tensors(block: BlockShape, layout: Layout) -> list[SavedTensor]:
    """The tensors one transformer block saves for backward, in bytes on one GPU.

    Pre-norm RMSNorm, q/k/v/o projections with RoPE (cos/sin gathered by position ids) and GQA, SDPA with the
    document mask turned into an additive bias (flash / memory-efficient kernels: no ``T×T`` probabilities, but
    the bias is ``B×Tq×Tk``), SwiGLU. Sequence-parallel regions hold ``1/tp`` of the tokens, head-sharded and
    MLP-hidden tensors ``1/tp`` of the width; context parallelism splits the queries, and keys/values are
    gathered over the whole sequence.
    """
    tp, e = layout.dims.tp, layout.precision.compute
    tokens, sp_tokens = layout.tokens, layout.sequence_parallel_tokens
    all_tokens = layout.batch_size * layout.seq_len  # keys/values of the whole sequence (gathered under CP)
    q_width = block.num_heads * block.head_dim // tp
    kv_width = block.num_kv_heads * block.head_dim // tp
    hidden = block.mlp_hidden // tp

    saved = _rms_norm_saved("attention norm", block.dim, sp_tokens, layout)
    saved.append(_norm_output("attention norm", block.dim, consumers=3, layout=layout))
    if block.qk_norm:
        saved += _rms_norm_saved("query norm", block.head_dim, tokens * block.num_heads // tp, layout)
        saved += _rms_norm_saved("key norm", block.head_dim, tokens * block.num_kv_heads // tp, layout)
    saved += [
        SavedTensor("RoPE cos and sin (fp32)", 2 * FP32 * block.head_dim * tokens),
        SavedTensor("rotated queries", e * q_width * tokens),
        SavedTensor("rotated keys", e * kv_width * all_tokens),
        SavedTensor("values", e * kv_width * all_tokens),
        SavedTensor(
            "attention mask as additive bias",
            e * layout.batch_size * (layout.seq_len // layout.dims.cp) * layout.seq_len,
        ),
        SavedTensor("attention output (o_proj input)", e * q_width * tokens),
        SavedTensor("attention log-sum-exp (fp32)", FP32 * (block.num_heads // tp) * tokens),
    ]
    saved += _rms_norm_saved("MLP norm", block.dim, sp_tokens, layout)
    saved.append(_norm_output("MLP norm", block.dim, consumers=2, layout=layout))
    saved += [
        SavedTensor(f"SwiGLU {name}", e * hidden * tokens)
        for name in ("fc1 output (SiLU input)", "fc3 output", "SiLU output", "gated product (fc2 input)")
    ]
    return saved


def outside_saved_tensors(model: ModelShape, layout: Layout) -> list[SavedTensor]:
    """Tensors saved for backward outside the blocks: embedding input, final norm, LM head input and the loss
    (next-token cross-entropy and z-loss on fp32 logits)."""
    tokens = layout.tokens
    vocab = model.vocab_size // layout.dims.tp if layout.loss_parallel else model.vocab_size
    saved = [SavedTensor("token ids (embedding input)", INT64 * tokens)]
    saved += _rms_norm_saved("final norm", model.block.dim, layout.sequence_parallel_tokens, layout)
    saved += [
        _norm_output("final norm", model.block.dim, consumers=1, layout=layout),
        SavedTensor("logits in fp32", FP32 * vocab * tokens),
        SavedTensor("log-softmax (fp32)", FP32 * vocab * tokens),
        SavedTensor("log-sum-exp (fp32, z-loss)", FP32 * tokens),
        SavedTensor("target ids", INT64 * tokens),
        SavedTensor("valid-target mask", tokens),
    ]
    return saved


def block_input_bytes(model: ModelShape, layout: Layout) -> int:
    """What activation checkpointing keeps of one block: its input (residual stream, sequence-parallel)."""
    return layout.precision.param * model.block.dim * layout.sequence_parallel_tokens


def batch_bytes(layout: Layout) -> int:
    """Document ids (whole sequence: the mask is built from all of them), this rank's position ids and the
    boolean ``B×T×T`` document mask, alive for the whole micro-step."""
    full = layout.batch_size * layout.seq_len
    return INT64 * full + INT64 * layout.tokens + layout.batch_size * layout.seq_len**2


# ---------------------------------------------------------------------------------------------------- memory


def _numel(shapes: Sequence[tuple[int, ...]], group: int = 1) -> int:
    return sum(fsdp_shard_numel(shape, group) for shape in shapes)


def memory_lines(
    model: ModelShape, layout: Layout, block_saved: Sequence[SavedTensor], outside_saved: Sequence[SavedTensor]
) -> list[MemoryLine]:
    precision, group, tp = layout.precision, layout.shard_group, layout.dims.tp
    local = [tp_local_shape(p, tp) for p in model.params]
    block_local = _numel([shape for p, shape in zip(model.params, local, strict=True) if p.in_block]) // model.depth
    root_local = _numel([shape for p, shape in zip(model.params, local, strict=True) if not p.in_block])
    held = _numel(local, group)
    how = f"sharded over dp_shard·cp={group}" if group > 1 else "replicated" if layout.wrapper == "ddp" else "whole"
    if tp > 1:
        how += f", tp={tp}"

    def same(category: str, size: int, note: str = "") -> MemoryLine:
        return MemoryLine(category, size, size, note)

    sharded = layout.wrapper in ("fsdp", "hsdp")
    # FSDP2 without gradient sync keeps the accumulated gradients unsharded (in the reduce dtype) until the last
    # micro-step reduce-scatters them; their shards replace them unit by unit, so the unsharded size is the peak.
    accumulates_unsharded = sharded and layout.grad_accum_steps > 1
    lines = [
        same("parameters", FP32 * held, f"fp32, {how}"),
        same("gradients", FP32 * _numel(local), "fp32, unsharded: accumulated without sync between micro-steps")
        if accumulates_unsharded
        else same("gradients", FP32 * held, f"fp32, {how}"),
        same("optimizer state (AdamW)", 2 * FP32 * held + FP32 * len(model.params), "exp_avg, exp_avg_sq fp32, step"),
    ]
    if layout.wrapper == "ddp":
        lines.append(same("DDP gradient buckets", FP32 * _numel(local), "gradient_as_bucket_view=False"))
    if sharded:
        alive_blocks = min(2, model.depth) if layout.reshard_after_forward else model.depth
        lines.append(
            same(
                "gathered parameters (FSDP)",
                precision.param * (root_local + alive_blocks * block_local),
                f"root + {alive_blocks} block(s) unsharded",
            )
        )
        lines.append(
            same(
                "unsharded gradients of one block",
                (precision.param + precision.reduce) * block_local,
                "before reduce-scatter / accumulation",
            )
        )
    elif precision.autocast_casts:
        matmul = _numel([shape for p, shape in zip(model.params, local, strict=True) if p.matmul])
        lines.append(same("bf16 weight copies (autocast)", 2 * matmul, "held for backward"))

    per_layer = sum(t.bytes for t in block_saved)
    lines += [
        MemoryLine(
            "activations: transformer blocks",
            model.depth * per_layer,
            model.depth * block_input_bytes(model, layout) + per_layer,
            "AC: block inputs + one recomputed block",
        ),
        same("activations: embedding, head, loss", sum(t.bytes for t in outside_saved)),
        same("batch and attention mask", batch_bytes(layout)),
    ]
    vocab = model.vocab_size // tp if layout.loss_parallel else model.vocab_size
    logit_grad_bytes = 2 * FP32 + (precision.compute if precision.compute != FP32 else 0)
    lines.append(same("logit gradients", logit_grad_bytes * vocab * layout.tokens, "transient, start of backward"))
    return lines


# ---------------------------------------------------------------------------------------------------- communication


def _ring_gather_or_scatter(full_bytes: float, n: int) -> float:
    return (n - 1) / n * full_bytes


def _ring_all_reduce(full_bytes: float, n: int) -> float:
    return 2 * (n - 1) / n * full_bytes


def collectives(model: ModelShape, layout: Layout) -> list[Collective]:
    """Each collective of one optimizer step with the bytes one GPU sends (groups of one rank are left out)."""
    dims, precision = layout.dims, layout.precision
    micro, depth = layout.grad_accum_steps, model.depth
    recompute = 1 if layout.activation_checkpointing else 0
    local = [tp_local_shape(p, dims.tp) for p in model.params]
    found: list[Collective] = []

    def add(name: str, group: str, size: int, calls: int, sent: float) -> None:
        if size > 1:
            found.append(Collective(name, group, size, calls, round(sent)))

    if layout.wrapper in ("fsdp", "hsdp"):
        group = layout.shard_group
        shard_all = _numel(local, group)
        # A rank contributes its shard to every all-gather and receives its shard of every reduce-scatter.
        add(
            "FSDP all-gather params (forward)",
            "dp_shard·cp",
            group,
            micro * (depth + 1),
            micro * (group - 1) * shard_all * precision.param,
        )
        if layout.reshard_after_forward:  # every unit, the root included, is gathered again for backward
            add(
                "FSDP all-gather params (backward)",
                "dp_shard·cp",
                group,
                micro * (depth + 1),
                micro * (group - 1) * shard_all * precision.param,
            )
        add("FSDP reduce-scatter grads", "dp_shard·cp", group, depth + 1, (group - 1) * shard_all * precision.reduce)
        if layout.wrapper == "hsdp":
            add(
                "HSDP all-reduce grads",
                "dp_replicate",
                dims.dp_replicate,
                depth + 1,
                _ring_all_reduce(shard_all * precision.reduce, dims.dp_replicate),
            )
    elif layout.wrapper == "ddp":
        add(
            "DDP all-reduce grads",
            "dp·cp",
            dims.dp * dims.cp,
            1,
            _ring_all_reduce(FP32 * _numel(local), dims.dp * dims.cp),
        )

    if dims.tp > 1:
        width_tokens = model.block.dim * layout.tokens  # elements of a gathered (full-sequence) activation
        residual, compute = precision.param, precision.compute
        # Per block: forward 2 all-gathers (norm outputs, residual dtype) + 2 reduce-scatters (o_proj, fc2 outputs);
        # backward the reverse collective on each gradient; recompute repeats the forward ones. Plus the embedding
        # (reduce-scatter forward, all-gather backward) and the head input (all-gather forward, reduce-scatter back).
        gather_bytes = depth * ((2 + 2 * recompute) * residual + 2 * compute) + 2 * residual
        scatter_bytes = depth * ((2 + 2 * recompute) * compute + 2 * residual) + 2 * residual
        calls = micro * (depth * (4 + 2 * recompute) + 2)
        add(
            "TP all-gather activations",
            "tp",
            dims.tp,
            calls,
            micro * _ring_gather_or_scatter(gather_bytes * width_tokens, dims.tp),
        )
        add(
            "TP reduce-scatter activations",
            "tp",
            dims.tp,
            calls,
            micro * _ring_gather_or_scatter(scatter_bytes * width_tokens, dims.tp),
        )
        if layout.loss_parallel:  # max, sum of exponentials and target logit of every token
            add(
                "TP all-reduce loss statistics",
                "tp",
                dims.tp,
                3 * micro,
                micro * 3 * _ring_all_reduce(FP32 * layout.tokens, dims.tp),
            )
        else:
            add(
                "TP all-gather logits",
                "tp",
                dims.tp,
                micro,
                micro * _ring_gather_or_scatter(compute * model.vocab_size * layout.tokens, dims.tp),
            )

    if dims.cp > 1:
        block = model.block
        keys_values = (
            2 * precision.compute * block.num_kv_heads * block.head_dim // dims.tp * layout.batch_size * layout.seq_len
        )
        add(
            "CP all-gather keys/values",
            "cp",
            dims.cp,
            micro * depth * 2 * (1 + recompute),
            micro * depth * (1 + recompute) * _ring_gather_or_scatter(keys_values, dims.cp),
        )
        add(
            "CP all-reduce key/value grads",
            "cp",
            dims.cp,
            micro * depth * 2,
            micro * depth * _ring_all_reduce(keys_values, dims.cp),
        )
    return found


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


def _check_divisible(model: ModelShape, layout: Layout) -> None:
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
) -> PlanReport:
    """Plan ``cfg`` on ``gpus`` GPUs of ``gpu_memory_gb`` GiB each (default GPU count: the product of the
    configured degrees, or 8 when ``dp_shard`` is -1). A run fits when its total stays within
    ``gpu_memory_gb·(1 - headroom) - reserved_gib`` (allocator fragmentation; CUDA context and NCCL buffers)."""
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
        seq_len=_positive_int(cfg, "data.seq_len"),
        grad_accum_steps=exp.grad_accum_steps,
        activation_checkpointing=exp.activation_checkpointing,
        reshard_after_forward=settings.reshard_after_forward,
        loss_parallel=settings.loss_parallel,
    )
    with torch.device("meta"):
        model = model_shape(instantiate(cfg.model))
    _check_divisible(model, layout)
    block_saved = tuple(block_saved_tensors(model.block, layout))
    outside_saved = tuple(outside_saved_tensors(model, layout))
    return PlanReport(
        name=exp.name,
        model=model,
        layout=layout,
        block_saved=block_saved,
        outside_saved=outside_saved,
        memory=tuple(memory_lines(model, layout, block_saved, outside_saved)),
        collectives=tuple(collectives(model, layout)),
        gpu_memory_gib=gpu_memory_gb,
        budget_bytes=int((gpu_memory_gb * (1 - headroom) - reserved_gib) * GIB),
    )


def _gib(size: float) -> str:
    return f"{size / GIB:9.2f}"


def format_plan(report: PlanReport) -> str:
    """The report as plain-text tables: memory per GPU (without / with activation checkpointing), the verdict,
    and the collectives of one optimizer step."""
    layout, model, dims = report.layout, report.model, report.layout.dims
    block_params = sum(math.prod(p.shape) for p in model.params if p.in_block)
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
        f"plan for {report.name}: {model.num_params / 1e9:.3f} B parameters ({block_params / 1e9:.3f} B in "
        f"{model.depth} blocks), vocabulary {model.vocab_size}",
        f"mesh: {dims.world_size} GPU(s), {layout.wrapper} (dp_replicate={dims.dp_replicate} dp_shard={dims.dp_shard} "
        f"cp={dims.cp} tp={dims.tp}), reshard_after_forward={layout.reshard_after_forward}",
        f"micro-batch {layout.batch_size} x {layout.seq_len} tokens, {layout.grad_accum_steps} accumulation step(s), "
        f"{precision}",
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
    config_path: str, overrides: Sequence[str] = (), gpus: int | None = None, gpu_memory_gb: float = 80.0
) -> int:
    """``polymodal plan``: print the plan; exit status 0 when the configured run fits, 1 when it does not."""
    report = plan_report(load_config(config_path, overrides), gpus=gpus, gpu_memory_gb=gpu_memory_gb)
    print(format_plan(report))
    return 0 if report.fits else 1
