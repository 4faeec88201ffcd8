"""The shapes the planner reasons about: the model's and the run's.

``param_shapes`` reads every distinct parameter of a model built on the meta device (so counts are exact and cost
no memory) into a ``ParamShape``: the dim tensor parallelism splits, the FSDP unit that holds it (None: the root),
whether a matmul uses it and whether the optimizer trains it. ``model_shape`` reads a transformer LM into a
``ModelShape``: the widths of its identical transformer blocks (``BlockShape``), its vocabulary, its parameters and
whether its head computes the loss itself (in chunks of labelled positions) or writes logits.
``tp_local_shape`` and ``fsdp_shard_numel`` give what one rank holds of a parameter under tensor parallelism and
FSDP2 sharding. ``Layout`` and ``Precision`` describe the run the formulas are applied to: mesh, data-parallel
wrapper, bytes per element and micro-batch (``TokenLayout`` adds the sequence length of a transformer LM's batch);
``FP32`` and ``INT64`` are element sizes in bytes.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from polymodal.config import ConfigError
from polymodal.models.layers.attention import Attention
from polymodal.models.layers.block import TransformerBlock
from polymodal.models.layers.mlp import SwiGLU
from polymodal.models.layers.norm import PerHeadLayerNorm, RMSNorm
from polymodal.models.parts import LinearHead, VocabularyHead
from polymodal.train.parallel.mesh import ParallelDims

FP32 = 4
INT64 = 8


Wrapper = Literal["none", "ddp", "fsdp", "hsdp"]
LMMask = Literal["document", "causal"]  # rows of several packed documents / every row one document
LM_MASKS: tuple[LMMask, ...] = ("document", "causal")


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
    """One distinct parameter: its shape, the dim tensor parallelism splits (None: replicated), the FSDP unit
    holding it (its index; None: the root), whether a matmul uses it (autocast keeps a bf16 copy) and whether the
    optimizer trains it (it then has a gradient and optimizer state); ``expert``: a stacked expert weight of an
    MoE layer, which expert parallelism cuts along dim 0 and FSDP shards over the ranks beside ``ep``."""

    name: str
    shape: tuple[int, ...]
    tp_dim: int | None
    unit: int | None
    matmul: bool
    trainable: bool = True
    expert: bool = False

    @property
    def in_block(self) -> bool:
        return self.unit is not None


@dataclass(frozen=True)
class ModelShape:
    block: BlockShape
    depth: int
    vocab_size: int
    params: tuple[ParamShape, ...]
    head_weight: str  # the name of the head's weight in ``params`` (the embedding's when they are tied)
    loss_chunk_size: int | None = None  # positions per chunk of the head's own loss; None: the head writes logits
    loss_grads_in_forward: bool = False  # the head's loss computes its gradients in forward (``loss_z_loss_weight``)

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
    """What the planner needs about a run: the mesh, the data-parallel wrapper, the micro-batch."""

    dims: ParallelDims
    wrapper: Wrapper
    precision: Precision
    batch_size: int
    grad_accum_steps: int
    activation_checkpointing: bool
    reshard_after_forward: bool
    loss_parallel: bool

    @property
    def expert_parallel(self) -> int:
        """Ranks each MoE layer's experts are sharded over (``planner.experts``)."""
        return self.dims.ep

    @property
    def shard_group(self) -> int:
        """Ranks that one FSDP unit is sharded over (1 when parameters are not sharded)."""
        return self.dims.dp_shard * self.dims.cp if self.wrapper in ("fsdp", "hsdp") else 1

    @property
    def expert_shard_group(self) -> int:
        """Ranks that FSDP shards an expert-parallel slice of experts over: those beside ``ep``."""
        return self.shard_group // self.expert_parallel


@dataclass(frozen=True)
class TokenLayout(Layout):
    """A transformer LM's run: the micro-batch is ``batch_size`` sequences of ``seq_len`` tokens. ``mask``:
    ``"document"`` when a row may hold several packed documents (a dense bool mask, the bound for a packed loader),
    ``"causal"`` when every row is one document (``CausalMask``: no mask tensor at all)."""

    seq_len: int
    mask: LMMask = "document"

    @property
    def tokens(self) -> int:
        """Tokens of this rank's micro-batch (context parallelism splits the sequence)."""
        return self.batch_size * self.seq_len // self.dims.cp

    @property
    def sequence_parallel_tokens(self) -> int:
        """Tokens of this rank in sequence-parallel regions (norms, residual stream) under tensor parallelism."""
        return self.tokens // self.dims.tp


# ---------------------------------------------------------------------------------------------------- model shape


def _tensor_parallel_dims(model: nn.Module) -> dict[int, int]:
    """Parameter id -> the dim tensor parallelism splits, following ``train.parallel.plans``: q/k/v and fc1/fc3
    and the LM head column-wise (dim 0 of the weight), o_proj and fc2 row-wise (dim 1), the embedding over the
    vocabulary (dim 0), per-head QK-norms with their heads (dim 0). Everything else (norms) is replicated."""
    split: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, Attention):
            for linear in (module.q_proj, module.k_proj, module.v_proj):
                split.update({id(p): 0 for p in linear.parameters()})
            for norm in (module.q_norm, module.k_norm):
                if isinstance(norm, PerHeadLayerNorm):
                    split.update({id(p): 0 for p in norm.parameters()})
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


def param_shapes(
    model: nn.Module,
    units: Sequence[nn.Module],
    trainable: Container[int] | None = None,
    tp_dims: Mapping[int, int] | None = None,
) -> tuple[ParamShape, ...]:
    """Every distinct parameter of ``model`` (tied weights once) with the index of the unit in ``units`` holding it,
    whether the optimizer trains it (``trainable``: parameter ids; None: all) and the dim tensor parallelism splits
    (``tp_dims``: parameter id -> dim; None: not split)."""
    unit_of = {id(param): index for index, unit in enumerate(units) for param in unit.parameters()}
    matmul = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    tp_dims = tp_dims or {}
    return tuple(
        ParamShape(
            name,
            tuple(p.shape),
            tp_dims.get(id(p)),
            unit_of.get(id(p)),
            id(p) in matmul,
            trainable is None or id(p) in trainable,
        )
        for name, p in model.named_parameters()
    )


def model_shape(model: nn.Module, trainable: Container[int] | None = None) -> ModelShape:
    """Read the block widths, vocabulary and every distinct parameter (tied weights once) of a built transformer
    LM; ``trainable``: the ids of the parameters the optimizer trains (None: all)."""
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

    params = param_shapes(model, [block for _, block in blocks], trainable, _tensor_parallel_dims(model))
    (head,) = heads
    head_weight = next(name for name, param in model.named_parameters() if param is head.proj.weight)
    chunk = head.loss_chunk_size if isinstance(head, VocabularyHead) else None
    early = chunk is not None and head.loss_z_loss_weight is not None
    return ModelShape(shapes.pop(), len(blocks), head.proj.out_features, params, head_weight, chunk, early)


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


def _numel(shapes: Sequence[tuple[int, ...]], group: int = 1) -> int:
    return sum(fsdp_shard_numel(shape, group) for shape in shapes)
