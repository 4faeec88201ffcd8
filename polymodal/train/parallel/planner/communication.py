"""Per-step communication: each collective of one optimizer step and the bytes one GPU sends in it.

Bytes are what one GPU *sends* with ring algorithms (all-gather and reduce-scatter of a full buffer of ``N`` bytes
over ``n`` ranks: ``(n-1)/n·N``; all-reduce: ``2·(n-1)/n·N``). ``collectives`` accounts for data parallelism (FSDP
all-gathers and reduce-scatters, the HSDP all-reduce across replicas, or DDP's all-reduce), tensor parallelism
(sequence-parallel activations, logits, gradients of replicated parameters), context parallelism (keys and
values and their gradients) and expert parallelism (the all-to-alls of MoE layers, ``expert_parallel_collectives``);
groups of one rank are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from polymodal.train.parallel.planner.experts import MoELayer, all_to_all_bytes
from polymodal.train.parallel.planner.shapes import FP32, Layout, ModelShape, ParamShape, TokenLayout
from polymodal.train.parallel.planner.states import local_numel


@dataclass(frozen=True)
class Collective:
    name: str
    group: str
    group_size: int
    calls_per_step: int
    bytes_per_step: int  # sent by one GPU per optimizer step


def _ring_gather_or_scatter(full_bytes: float, n: int) -> float:
    return (n - 1) / n * full_bytes


def _ring_all_reduce(full_bytes: float, n: int) -> float:
    return 2 * (n - 1) / n * full_bytes


def _collective(name: str, group: str, size: int, calls: int, sent: float) -> list[Collective]:
    """The collective, or nothing over a group of one rank."""
    return [Collective(name, group, size, calls, round(sent))] if size > 1 else []


def data_parallel_collectives(params: Sequence[ParamShape], num_units: int, layout: Layout) -> list[Collective]:
    """FSDP: every unit (``num_units`` of them, and the root) is all-gathered in each forward and, when resharded
    after forward, again in each backward; gradients of the trainable parameters are reduce-scattered once per step
    (no sync between micro-steps), and under HSDP their shards all-reduced across replicas. Under expert parallelism
    the experts of each MoE layer are a unit of their own, sharded over the ranks beside ``ep``. DDP: one bucketed
    all-reduce of fp32 gradients per step."""
    dims = layout.dims
    if layout.wrapper == "ddp":
        group = dims.dp * dims.cp
        grads = FP32 * local_numel([param for param in params if param.trainable], layout)
        return _collective("DDP all-reduce grads", "dp·cp", group, 1, _ring_all_reduce(grads, group))
    if layout.wrapper not in ("fsdp", "hsdp"):
        return []
    if layout.expert_parallel == 1:
        return _fsdp_collectives("", params, num_units + 1, "dp_shard·cp", layout.shard_group, layout)
    experts = [param for param in params if param.expert]
    others = [param for param in params if not param.expert]
    expert_units = len({param.unit for param in experts})
    return _fsdp_collectives("", others, num_units + 1, "dp_shard·cp", layout.shard_group, layout) + _fsdp_collectives(
        "expert ", experts, expert_units, "dp_shard_mod_ep·cp", layout.expert_shard_group, layout
    )


def _fsdp_collectives(
    kind: str, params: Sequence[ParamShape], units: int, group_name: str, group: int, layout: Layout
) -> list[Collective]:
    """The all-gathers, reduce-scatters (and HSDP all-reduces) of ``units`` FSDP units holding ``params``;
    ``kind`` ("" or "expert ") prefixes what the lines name."""
    precision, micro, replicas = layout.precision, layout.grad_accum_steps, layout.dims.dp_replicate
    # a rank sends its shard to every all-gather, and receives its shard of a reduce-scatter
    shard = local_numel(params, layout, group)
    trained = local_numel([param for param in params if param.trainable], layout, group)
    gather = micro * (group - 1) * shard * precision.param
    found = _collective(f"FSDP all-gather {kind}params (forward)", group_name, group, micro * units, gather)
    if layout.reshard_after_forward:
        found += _collective(f"FSDP all-gather {kind}params (backward)", group_name, group, micro * units, gather)
    scatter = (group - 1) * trained * precision.reduce
    found += _collective(f"FSDP reduce-scatter {kind}grads", group_name, group, units, scatter)
    if layout.wrapper == "hsdp":
        all_reduce = _ring_all_reduce(trained * precision.reduce, replicas)
        found += _collective(f"HSDP all-reduce {kind}grads", "dp_replicate", replicas, units, all_reduce)
    return found


def _tensor_parallel_collectives(model: ModelShape, layout: TokenLayout) -> list[Collective]:
    """Per block, forward: 2 all-gathers of norm outputs (residual dtype) and 2 reduce-scatters of the o_proj and
    fc2 outputs (compute dtype); backward: the opposite collective on each gradient. Recomputation (torch's
    non-reentrant checkpoint stops once the last saved tensor is rebuilt, before fc2) repeats the 2 all-gathers and
    the o_proj reduce-scatter. Outside the blocks, in the residual dtype: the embedding output is reduce-scattered
    (all-gathered in backward), the head input all-gathered (reduce-scattered in backward). The logits are
    all-gathered unless ``loss_parallel``. Gradients of replicated parameters (norm weights) are partial sums: FSDP
    all-reduces them in each backward, otherwise they are reduced once, when the optimizer reads them."""
    tp, precision, micro, depth = layout.dims.tp, layout.precision, layout.grad_accum_steps, model.depth
    if tp == 1:
        return []
    recompute = 1 if layout.activation_checkpointing else 0
    residual, compute = precision.param, precision.compute
    activation = model.block.dim * layout.tokens  # elements of one gathered (full-sequence) activation
    gathers = (depth * (2 + 2 * recompute) + 2, depth * 2)  # calls in the (residual, compute) dtype
    scatters = (depth * 2 + 2, depth * (2 + recompute))
    found: list[Collective] = []
    for name, (in_residual, in_compute) in (("all-gather", gathers), ("reduce-scatter", scatters)):
        sent = micro * _ring_gather_or_scatter((in_residual * residual + in_compute * compute) * activation, tp)
        found += _collective(f"TP {name} activations", "tp", tp, micro * (in_residual + in_compute), sent)
    if not layout.loss_parallel:
        logits = micro * _ring_gather_or_scatter(compute * model.vocab_size * layout.tokens, tp)
        found += _collective("TP all-gather logits", "tp", tp, micro, logits)
    replicated = [p for p in model.params if p.tp_dim is None]
    reductions = micro if layout.wrapper in ("fsdp", "hsdp") else 1
    replicated_bytes = precision.param * sum(math.prod(p.shape) for p in replicated)
    sent = reductions * _ring_all_reduce(replicated_bytes, tp)
    return found + _collective("TP all-reduce replicated grads", "tp", tp, reductions * len(replicated), sent)


def _context_parallel_collectives(model: ModelShape, layout: TokenLayout) -> list[Collective]:
    """Per block, keys and values (rotated, this rank's heads) are all-gathered along the sequence in forward and
    again when recomputed; in backward their gradients are all-reduced whole (``all_gather_with_grad``)."""
    dims, micro, depth, block = layout.dims, layout.grad_accum_steps, model.depth, model.block
    if dims.cp == 1:
        return []
    gathered = 1 + (1 if layout.activation_checkpointing else 0)
    kv_width = block.num_kv_heads * block.head_dim // dims.tp
    keys_values = 2 * layout.precision.compute * kv_width * layout.batch_size * layout.seq_len
    sent = micro * depth * gathered * _ring_gather_or_scatter(keys_values, dims.cp)
    found = _collective("CP all-gather keys/values", "cp", dims.cp, micro * depth * 2 * gathered, sent)
    sent = micro * depth * _ring_all_reduce(keys_values, dims.cp)
    return found + _collective("CP all-reduce key/value grads", "cp", dims.cp, micro * depth * 2, sent)


def collectives(model: ModelShape, layout: TokenLayout) -> list[Collective]:
    """Each collective of one optimizer step of a transformer LM with the bytes one GPU sends (groups of one rank
    are left out)."""
    return (
        data_parallel_collectives(model.params, model.depth, layout)
        + _tensor_parallel_collectives(model, layout)
        + _context_parallel_collectives(model, layout)
    )


def expert_parallel_collectives(layers: Sequence[MoELayer], layout: Layout) -> list[Collective]:
    """Per MoE layer and micro-step, 2 all-to-alls of its ``[E, C, D]`` buffer forward (dispatch, return) and 2 in
    backward, 2 more when activation checkpointing recomputes the forward; each sends ``(ep-1)/ep`` of the buffer
    (``experts.all_to_all_bytes``)."""
    ep, micro = layout.expert_parallel, layout.grad_accum_steps
    per_layer = 4 + (2 if layout.activation_checkpointing else 0)
    sent = micro * per_layer * sum(all_to_all_bytes(layer, ep) for layer in layers)
    return _collective("EP all-to-all expert tokens", "ep", ep, micro * per_layer * len(layers), sent)
