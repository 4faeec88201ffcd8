"""Apply parallelism to a built model, in the one order that composes: tensor parallel → context parallel →
expert parallel → activation checkpointing → ``torch.compile`` of each unit → data parallel (FSDP2 / HSDP / DDP).

Compiling per unit (as torchtitan does) rather than the whole model: the units are the transformer blocks FSDP2
shards and activation checkpointing wraps, so each compiled region is one FSDP unit (FSDP2's all-gather and
reduce-scatter hooks are Dynamo-disabled: they run eagerly around the block's graph), the blocks share one compiled
graph (they differ only in their parameters), and the code between blocks (embeddings, masks, heads, losses) stays
eager. A model without such units is compiled whole."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from polymodal.config.schema import ExperimentConfig
from polymodal.train.parallel.expert_parallel import moe_layers, shard_experts
from polymodal.train.parallel.mesh import Mesh
from polymodal.train.parallel.plans import decoder_tensor_parallel, fsdp_units, install_context_parallel, plan_for

log = logging.getLogger(__name__)


def checkpoint_activations(model: nn.Module, units: list[nn.Module]) -> list[nn.Module]:
    """Recompute each unit's activations in backward; returns the wrappers that replaced the units."""
    targets = set(units)
    apply_activation_checkpointing(model, check_fn=lambda module: module in targets)
    return [m for m in model.modules() if isinstance(m, CheckpointWrapper) and m._checkpoint_wrapped_module in targets]


def compile_units(units: list[nn.Module]) -> None:
    """``torch.compile`` each unit in place (``nn.Module.compile``): the module keeps its identity and its
    parameters' names, so FSDP2 then shards the very modules that were compiled and state dicts do not change."""
    for unit in units:
        unit.compile()


def shard_data_parallel(model: nn.Module, units: list[nn.Module], mesh: Mesh, exp: ExperimentConfig) -> None:
    """FSDP2 over dp_shard·cp (HSDP: replicated across dp_replicate); bf16 compute with fp32 reduction under bf16.

    Under expert parallelism the experts of each MoE layer are a unit of their own over the ranks left beside
    ``ep`` (dp_shard_mod_ep·cp). Their gradients already sum the tokens of the ``ep`` ranks (the all-to-all's
    backward), so they are divided by the same count as every other gradient, the whole data-parallel size."""
    dims = mesh.dims
    replicated = ("dp_replicate",) if dims.dp_replicate > 1 else ()
    fsdp_mesh = mesh[(*replicated, "dp_shard_cp")] if replicated else mesh["dp_shard_cp"]
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if exp.precision == "bf16" else None, reduce_dtype=torch.float32
    )
    reshard = exp.distributed.reshard_after_forward
    if dims.ep > 1:
        expert_mesh = mesh[(*replicated, "dp_shard_mod_ep_cp")] if replicated else mesh["dp_shard_mod_ep_cp"]
        for layer in moe_layers(model):
            experts = fully_shard(layer.experts, mesh=expert_mesh, mp_policy=policy, reshard_after_forward=reshard)
            experts.set_gradient_divide_factor(float(fsdp_mesh.size()))
            # A divide factor other than the group size makes FSDP2 reduce-scatter with PREMUL_SUM, which gloo lacks;
            # a plain SUM then a division is the same. Not on a group of one: torch then divides twice.
            if dims.dp_shard_mod_ep * dims.cp > 1:
                experts.set_force_sum_reduction_for_comms(True)
    for unit in units:
        fully_shard(unit, mesh=fsdp_mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=fsdp_mesh, mp_policy=policy, reshard_after_forward=reshard)


def parallelize(
    model: nn.Module, mesh: Mesh | None, exp: ExperimentConfig, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """Returns ``(model, train_model)``: ``model`` owns the parameters (state dicts, clipping, FLOPs), ``train_model``
    is what the loop calls (``model`` itself, or a DDP / compiled wrapper of it)."""
    plan = plan_for(model)
    dims = mesh.dims if mesh is not None else None
    if dims is not None and dims.tp > 1:
        if plan.tensor_parallel is None:
            raise ValueError(f"no tensor-parallel plan for {type(model).__name__}; set experiment.distributed.tp=1")
        frozen = {name for name, param in model.named_parameters(remove_duplicate=False) if not param.requires_grad}
        decoder_tensor_parallel(model, plan.tensor_parallel, mesh["tp"], exp.distributed.loss_parallel)
        for name, param in model.named_parameters(remove_duplicate=False):
            if name in frozen:  # torch's SequenceParallel re-registers norm weights with requires_grad=True
                param.requires_grad_(False)
    if dims is not None and dims.cp > 1:
        if not plan.sequence_keys:
            raise ValueError(f"no context-parallel plan for {type(model).__name__}; set experiment.distributed.cp=1")
        install_context_parallel(model, mesh.group("cp"))
    if dims is not None and dims.ep > 1:
        if not shard_experts(model, mesh["ep"]):
            name = type(model).__name__
            raise ValueError(f"{name} has no mixture-of-experts layers; set experiment.distributed.ep=1")
    units = fsdp_units(model)
    if exp.activation_checkpointing:
        units = checkpoint_activations(model, units)
    if exp.torch_compile and units:
        compile_units(units)

    train_model = model
    if dims is not None and dims.strategy == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, process_group=mesh.group("dp_cp"), device_ids=device_ids)
    elif dims is not None and dims.dp_replicate * dims.dp_shard * dims.cp > 1:
        shard_data_parallel(model, units, mesh, exp)
    if exp.torch_compile and not units:
        log.info("torch_compile: %s has no transformer blocks to compile one by one; compiling it whole", type(model))
        train_model = torch.compile(train_model)
    return model, train_model
