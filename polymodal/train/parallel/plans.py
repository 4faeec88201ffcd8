"""Parallel plans applied to a model: the model describes itself (``parallel_plan()``, ``fsdp_units()``, see
:mod:`polymodal.models.protocol`); this module turns the description into torch's tensor-parallel styles, the
context-parallel attention kernel and the FSDP units. Nothing here knows a model class.

Tensor parallelism (Megatron-style, with sequence parallelism) inside every :class:`TransformerBlock`:
``q/k/v_proj`` and ``mlp.fc1/fc3`` are column-parallel, ``o_proj`` and ``mlp.fc2`` row-parallel with their
output reduce-scattered along the sequence, the norms run sequence-parallel on a sequence shard. Between blocks
activations stay sharded along the sequence (``Shard(1)``). QK-norms see each rank's heads: a norm shared by all
heads is replicated (its gradient summed over the ranks' heads), a per-head norm is sharded with the heads.

Context parallelism: the sequence keys of the batch are split into ``cp`` contiguous chunks; each rank embeds
and attends with its chunk of queries against keys/values all-gathered from the CP group (the mask is built from
the full document ids, so document masks work; a batch of one-document rows brings a ``CausalMask``, and rank ``r``
then attends the keys up to the end of its own chunk with a lower-right causal bias, no mask tensor). FlexAttention
block masks cover whole sequences and are refused here. Ring attention (``torch.distributed.tensor.experimental.
context_parallel``) would save the gathered K/V memory, but it runs only on CUDA SDPA kernels and only for plain
causal masks, not our block-diagonal document masks, and not on gloo/CPU where the tests run.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.nn.attention.flex_attention import BlockMask

from polymodal.distributed.collectives import all_gather_with_grad
from polymodal.models.layers.attention import Attention, masked_attention
from polymodal.models.layers.block import TransformerBlock
from polymodal.models.layers.cross_attention import CrossAttentionBlock
from polymodal.models.layers.mask_rules import AttentionMask
from polymodal.models.layers.moe import MoEFeedForward
from polymodal.models.layers.norm import PerHeadLayerNorm
from polymodal.models.meta import DataDict
from polymodal.models.parts import VocabularyHead
from polymodal.models.protocol import DecoderLayout, ParallelPlan

log = logging.getLogger(__name__)

HEAD_DIM = 2  # of the [B, T, heads, head_dim] queries and keys the QK-norms see


class HeadParallel(ParallelStyle):
    """A module with one row of parameters per head (``[num_heads, ...]``) run on the heads of a column-parallel
    projection: its parameters sharded along the heads (``Shard(0)``), its input ``[B, T, heads, head_dim]``, this
    rank's heads, annotated ``Shard(2)``, its output local again."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def shard_heads(name: str, submodule: nn.Module, mesh: DeviceMesh) -> None:
            for param_name, param in list(submodule.named_parameters(recurse=False)):
                sharded = distribute_tensor(param, mesh, [Shard(0)], src_data_rank=self.src_data_rank)
                submodule.register_parameter(param_name, nn.Parameter(sharded, param.requires_grad))

        def annotate_heads(_module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
            return (DTensor.from_local(inputs[0], mesh, [Shard(HEAD_DIM)], run_check=False), *inputs[1:])

        def to_local(_module: nn.Module, output: DTensor, _mesh: DeviceMesh) -> torch.Tensor:
            return output.to_local()

        return distribute_module(module, device_mesh, shard_heads, annotate_heads, to_local)


def qk_norm_style(norm: nn.Module) -> ParallelStyle:
    """Per-head norms are sharded with the heads; a norm shared by all heads is replicated and runs on the local
    heads as SequenceParallel runs a norm on a sequence shard (the "sequence" dim being the heads')."""
    if isinstance(norm, PerHeadLayerNorm):
        return HeadParallel()
    return SequenceParallel(sequence_dim=HEAD_DIM, use_local_output=True)


def transformer_block_plan(block: TransformerBlock) -> dict[str, object]:
    """Tensor + sequence parallel styles for one block; its input and output are ``Shard(1)`` local tensors (the
    norms return local tensors, so the residual adds work in pre-norm and res-post-norm order alike)."""
    if isinstance(block.mlp, MoEFeedForward):
        raise ValueError("tensor parallelism of mixture-of-experts blocks is not supported: set distributed.tp=1")
    plan: dict[str, object] = {
        "attn_norm": SequenceParallel(use_local_output=True),
        "attn": PrepareModuleInput(
            input_layouts=(Shard(1), None, None, None), desired_input_layouts=(Replicate(), None, None, None)
        ),
        "attn.q_proj": ColwiseParallel(),
        "attn.k_proj": ColwiseParallel(),
        "attn.v_proj": ColwiseParallel(),
        "attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
        "mlp_norm": SequenceParallel(use_local_output=True),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "mlp.fc1": ColwiseParallel(),
        "mlp.fc3": ColwiseParallel(),
        "mlp.fc2": RowwiseParallel(output_layouts=Shard(1)),
    }
    if block.attn.q_norm is not None:
        plan["attn.q_norm"] = qk_norm_style(block.attn.q_norm)
        plan["attn.k_norm"] = qk_norm_style(block.attn.k_norm)
    return plan


def _check_tp_divides(model: nn.Module, tp: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, Attention) and module.num_kv_heads % tp:
            raise ValueError(f"{name}: tp={tp} must divide num_kv_heads={module.num_kv_heads}")


def decoder_tensor_parallel(model: nn.Module, layout: DecoderLayout, tp_mesh: DeviceMesh, loss_parallel: bool) -> None:
    """Embedding row-parallel into a sequence shard, blocks as above, final norm sequence-parallel, head
    column-parallel: to full logits, or with ``loss_parallel`` to logits left sharded over the vocabulary (a
    ``DTensor`` the loss must consume under ``torch.distributed.tensor.parallel.loss_parallel``). Tied
    embedding/head weights are re-tied after sharding (both are sharded along the vocabulary). A head that would
    compute the loss itself writes logits instead (:func:`head_writes_logits`)."""
    _check_tp_divides(model, tp_mesh.size())
    head_writes_logits(model)
    embedding, head = model.get_submodule(layout.embedding), model.get_submodule(layout.head)
    tied = head.weight is embedding.weight
    parallelize_module(
        model,
        tp_mesh,
        {
            layout.embedding: RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            layout.final_norm: SequenceParallel(),
            layout.head: ColwiseParallel(
                input_layouts=Shard(1),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        },
    )
    for block in model.get_submodule(layout.blocks):
        parallelize_module(block, tp_mesh, transformer_block_plan(block))
    if tied:
        head.weight = embedding.weight


def head_writes_logits(model: nn.Module) -> None:
    """Turn off the chunked loss of every :class:`VocabularyHead`: it needs the whole vocabulary of the weight on
    one rank, and a column-parallel head holds a slice of it. The objective then takes the loss from the logits."""
    for name, module in model.named_modules():
        if isinstance(module, VocabularyHead) and module.loss_chunk_size is not None:
            module.loss_chunk_size = None
            log.info(
                "tensor parallel: %s writes logits and the loss is taken from them (the chunked head loss needs "
                "the whole head weight, which is sharded over the vocabulary)",
                name,
            )


class ContextParallelAttention:
    """An attention kernel for a sequence split over a CP group: local queries against gathered keys/values."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.rank = dist.get_rank(group)

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        is_causal: bool,
        dropout_p: float,
    ) -> torch.Tensor:
        if isinstance(mask, BlockMask):
            raise ValueError("context parallelism takes dense or causal masks: build the model with attention='sdpa'")
        k = all_gather_with_grad(k, dim=2, group=self.group)
        v = all_gather_with_grad(v, dim=2, group=self.group)
        return masked_attention(q, k, v, mask, is_causal, dropout_p, q_offset=self.rank * q.shape[2])


def install_context_parallel(model: nn.Module, group: dist.ProcessGroup) -> None:
    kernel = ContextParallelAttention(group)
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel = kernel


def split_sequence(batch: DataDict, keys: tuple[str, ...], rank: int, world: int) -> DataDict:
    """This CP rank's contiguous chunk of each sequence key (dim 1); other keys are kept whole."""
    split = dict(batch)
    for key in keys:
        length = batch[key].shape[1]
        if length % world:
            raise ValueError(f"context parallel: sequence length {length} of '{key}' is not divisible by cp={world}")
        split[key] = batch[key].narrow(1, rank * (length // world), length // world)
    return split


def plan_for(model: nn.Module) -> ParallelPlan:
    """The model's own plan (``parallel_plan()``), or none."""
    return model.parallel_plan() if hasattr(model, "parallel_plan") else ParallelPlan()


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The model's ``fsdp_units()``, else each transformer block (self-attention blocks and encoder-decoder
    cross-attention blocks): FSDP2 shards each as its own unit (gathered just before use), then the rest at the root;
    activation checkpointing wraps the same units."""
    if hasattr(model, "fsdp_units"):
        return list(model.fsdp_units())
    return [module for module in model.modules() if isinstance(module, (TransformerBlock, CrossAttentionBlock))]
