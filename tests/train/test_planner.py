"""The planner's numbers against measurements of the real model, optimizer and parallel wrappers.

Multi-GPU layouts are measured in a forked process as rank 0 of a fake process group (``torch.testing``'s
``FakeStore``): collectives do nothing, but FSDP2, tensor and context parallelism build exactly the shards,
gathered tensors and autograd graphs they build on a real mesh, and every collective they issue passes through the
dispatcher, where a ``TorchDispatchMode`` records it. Rank 0 holds the largest FSDP shard, which the planner reports.
"""

from __future__ import annotations

import math
import multiprocessing
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
from small_llm import SMALL, TINY
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from polymodal.config import ConfigError, experiment_config, instantiate, load_config
from polymodal.distributed.env import gradient_sync
from polymodal.train.parallel.mesh import Mesh, ParallelDims
from polymodal.train.parallel.parallelize import parallelize
from polymodal.train.parallel.planner import (
    GIB,
    block_input_bytes,
    format_plan,
    fsdp_shard_numel,
    model_shape,
    plan_main,
    plan_report,
)
from polymodal.train.parallel.plans import plan_for, split_sequence

fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")

# The only tensors autograd saves that the planner leaves out are a few scalars of the loss (8 or 12 bytes) and, under
# context parallelism, the int64 query positions of the mask rows (8·T/cp bytes per block); 1% covers both.
ACTIVATION_TOLERANCE = 0.01
CHILD_TIMEOUT_S = 300  # a hung child fails its test instead of the whole run


def small_config(*overrides: str):
    return load_config(TINY, [*SMALL, *overrides])


def synthetic_batch(cfg, seed: int = 0, one_document: bool = False) -> dict[str, torch.Tensor]:
    """Two packed documents per row (the second starts at 5/8 of the row), like the packed text loader makes; or,
    with ``one_document``, one document per row."""
    generator = torch.Generator().manual_seed(seed)
    batch, length, vocab = cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    boundary = length if one_document else 5 * length // 8
    positions = torch.arange(length).repeat(batch, 1)
    positions[:, boundary:] -= boundary
    documents = torch.zeros(batch, length, dtype=torch.long)
    documents[:, boundary:] = 1
    return {
        "input_ids": torch.randint(vocab, (batch, length), generator=generator),
        "target_ids": torch.randint(vocab, (batch, length), generator=generator),
        "document_ids": documents,
        "position_ids": positions,
    }


def in_fake_world(size: int, measure: Callable[..., Any], *args: Any) -> Any:
    """``measure(*args)`` run as rank 0 of a fake ``size``-rank process group, in a fresh process, and its result.

    Each world gets a fresh *spawned* process: DTensor caches sharding plans by device mesh (a second fake world
    in one process would reuse plans bound to destroyed groups), and a forked child can inherit a lock held by
    one of the test process's threads and hang.
    """
    if size == 1:
        return measure(*args)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_fake_world_child, args=(sender, size, measure, args))
    process.start()
    sender.close()
    if not receiver.poll(CHILD_TIMEOUT_S):
        process.kill()
        process.join()
        raise AssertionError(f"measurement on a fake {size}-rank world did not finish in {CHILD_TIMEOUT_S} s")
    ok, result = receiver.recv()
    process.join()
    if not ok:
        raise AssertionError(f"measurement on a fake {size}-rank world failed:\n{result}")
    return result


def _fake_world_child(sender, size: int, measure: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("fake", store=fake_pg.FakeStore(), rank=0, world_size=size)
        sender.send((True, measure(*args)))
    except BaseException:  # the parent re-raises it with the child's traceback
        sender.send((False, traceback.format_exc()))
    finally:
        sender.close()


def parallel_model(cfg, world: int) -> tuple[nn.Module, nn.Module, int]:
    """The model as the trainer wraps it on ``world`` ranks (call inside ``in_fake_world``), and this rank's CP size."""
    exp = experiment_config(cfg)
    dims = ParallelDims.from_config(exp.distributed, world)
    mesh = Mesh.build(dims, "cpu") if world > 1 else None
    torch.manual_seed(0)
    model, train_model = parallelize(instantiate(cfg.model), mesh, exp, torch.device("cpu"))
    return model, train_model, dims.cp


def rank_batch(cfg, model: nn.Module, cp: int, one_document: bool = False) -> dict[str, torch.Tensor]:
    return split_sequence(synthetic_batch(cfg, one_document=one_document), plan_for(model).sequence_keys, 0, cp)


def plain_tensors(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The ordinary tensors inside ``tensor`` (DTensor shards, async collective results), or itself."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            inner = getattr(tensor, name)
            if isinstance(inner, torch.Tensor):  # DTensor also flattens to its device mesh
                yield from plain_tensors(inner)
    else:
        yield tensor


def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied weights counted once)."""
    storages = {}
    for tensor in tensors:
        for plain in plain_tensors(tensor):
            storages[plain.untyped_storage().data_ptr()] = plain.untyped_storage().nbytes()
    return sum(storages.values())


def storage_ptrs(tensors) -> set[int]:
    return {plain.untyped_storage().data_ptr() for tensor in tensors for plain in plain_tensors(tensor)}


def memory_of(report) -> dict[str, int]:
    return {line.category: line.with_ac for line in report.memory}


def forward_loss(cfg, train_model: nn.Module, batch) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.experiment.precision == "bf16"):
        output = train_model(dict(batch))
        loss, _ = instantiate(cfg.loss)(output)
    return loss


def saved_activation_bytes(cfg, model: nn.Module, train_model: nn.Module, batch) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward + loss, parameters excluded.

    Parameters are read at pack time: inside an FSDP unit's forward they are the unsharded (gathered) tensors,
    which the planner counts as gathered parameters, not activations."""
    constants = storage_ptrs(list(model.buffers()))
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        params = storage_ptrs(list(model.parameters()))
        for plain in plain_tensors(tensor):
            storage = plain.untyped_storage()
            if storage.data_ptr() not in params | constants:
                saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward_loss(cfg, train_model, batch)
    return sum(saved.values())


# ------------------------------------------------------------------------------------------- parameters and state


def measure_state_bytes(cfg, world: int) -> dict[str, int]:
    model, train_model, cp = parallel_model(cfg, world)
    optimizer = instantiate(cfg.optim.optimizer, model=model)
    forward_loss(cfg, train_model, rank_batch(cfg, model, cp)).backward()
    optimizer.step()
    parameters = list(model.parameters())
    return {
        "parameters": held_bytes(parameters),
        "gradients": held_bytes(p.grad for p in parameters),
        "optimizer state (AdamW)": held_bytes(t for state in optimizer.state.values() for t in state.values()),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (1, ["constants.tie_embeddings=true"]),
        (1, ["constants.tie_embeddings=false", "experiment.precision=bf16"]),
        (3, ["constants.vocab_size=250", "constants.tie_embeddings=false"]),  # uneven shards: rank 0 is the largest
        (4, ["experiment.precision=bf16", "experiment.distributed.tp=2"]),
        (4, ["experiment.distributed.tp=2", "+model.qk_norm=per_head_layernorm"]),  # norms sharded with the heads
        (4, ["experiment.distributed.strategy=hsdp", "experiment.distributed.dp_replicate=2"]),
        (4, ["experiment.distributed.cp=2"]),
    ],
)
def test_parameter_gradient_and_optimizer_bytes_equal_a_real_adamw_step(world, overrides):
    cfg = small_config(*overrides)
    predicted = memory_of(plan_report(cfg, gpus=world))

    measured = in_fake_world(world, measure_state_bytes, cfg, world)
    assert {name: predicted[name] for name in measured} == measured


def unsharded_accumulated_grads(model: nn.Module) -> list[torch.Tensor]:
    """The gradients FSDP2 keeps unsharded between micro-steps without gradient sync (FSDP internals)."""
    grads = []
    for module in model.modules():
        group = module._get_fsdp_state()._fsdp_param_group if hasattr(module, "_get_fsdp_state") else None
        for param in group.fsdp_params if group is not None else ():
            accumulated = param.unsharded_accumulated_grad
            grads.append(accumulated if accumulated is not None else param._unsharded_param.grad)
    return grads


def measure_unsynced_gradient_bytes(cfg) -> int:
    model, train_model, cp = parallel_model(cfg, 4)
    with gradient_sync(train_model, enabled=False):
        forward_loss(cfg, train_model, rank_batch(cfg, model, cp)).backward()
    grads = unsharded_accumulated_grads(model)
    assert all(grad.dtype == torch.float32 for grad in grads)
    return held_bytes(grads)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp_gradients_between_unsynced_micro_steps_are_whole_fp32_tensors():
    cfg = small_config("experiment.precision=bf16", "experiment.grad_accum_steps=2")
    predicted = memory_of(plan_report(cfg, gpus=4))["gradients"]

    assert in_fake_world(4, measure_unsynced_gradient_bytes, cfg) == predicted


def test_fsdp_shard_is_the_ceiling_of_dim0_over_the_group():
    assert fsdp_shard_numel((250, 64), 3) == 84 * 64
    assert fsdp_shard_numel((256, 64), 8) == 32 * 64
    assert fsdp_shard_numel((7,), 8) == 1
    assert fsdp_shard_numel((), 8) == 1


# ------------------------------------------------------------------------------------------------ activations


def measure_saved_activation_bytes(cfg, world: int, one_document: bool = False) -> int:
    model, train_model, cp = parallel_model(cfg, world)
    return saved_activation_bytes(cfg, model, train_model, rank_batch(cfg, model, cp, one_document))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (1, []),
        (1, ["experiment.precision=bf16"]),  # autocast over fp32 parameters: bf16 weight copies are saved too
        (1, ["+model.qk_norm=true"]),
        (4, ["experiment.precision=bf16"]),  # FSDP mixed precision: bf16 parameters and residual stream
        (8, ["experiment.distributed.tp=2"]),  # sequence parallel
        (8, ["experiment.precision=bf16", "experiment.distributed.cp=2"]),
        (8, ["experiment.precision=bf16", "experiment.distributed.tp=2", "experiment.distributed.cp=2"]),
    ],
)
def test_saved_activations_equal_what_autograd_saves(world, overrides):
    cfg = small_config(*overrides)
    report = plan_report(cfg, gpus=world)
    blocks = report.model.depth * sum(t.bytes for t in report.block_saved)
    weight_copies = memory_of(report).get("bf16 weight copies (autocast)", 0)
    predicted = blocks + sum(t.bytes for t in report.outside_saved) + weight_copies

    measured = in_fake_world(world, measure_saved_activation_bytes, cfg, world)
    assert measured == pytest.approx(predicted, rel=ACTIVATION_TOLERANCE)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("world", "overrides"),
    [(1, []), (4, ["experiment.precision=bf16"]), (8, ["experiment.precision=bf16", "experiment.distributed.cp=2"])],
)
def test_one_document_rows_save_no_mask(world, overrides):
    """Rows of one document attend through a CausalMask: no mask tensor, no bias saved by any block."""
    cfg = small_config(*overrides)
    report = plan_report(cfg, gpus=world, mask="causal")
    assert "attention mask as additive bias" not in {t.name for t in report.block_saved}
    document = memory_of(plan_report(cfg, gpus=world))["batch and attention mask"]
    size, length = cfg.data.batch_size, cfg.data.seq_len
    assert document - memory_of(report)["batch and attention mask"] == size * length**2
    blocks = report.model.depth * sum(t.bytes for t in report.block_saved)
    weight_copies = memory_of(report).get("bf16 weight copies (autocast)", 0)
    predicted = blocks + sum(t.bytes for t in report.outside_saved) + weight_copies

    measured = in_fake_world(world, measure_saved_activation_bytes, cfg, world, True)
    assert measured == pytest.approx(predicted, rel=ACTIVATION_TOLERANCE)


class ReentrantCheckpoint(nn.Module):
    """Recompute a block in backward; the reentrant variant saves the block's inputs where the hooks see them."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x, mask, is_causal, position_ids):
        return checkpoint(self.block, x, mask, is_causal, position_ids, use_reentrant=True)


def test_checkpointed_blocks_save_only_their_inputs():
    cfg = small_config()
    report = plan_report(cfg, gpus=1)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    blocks = model.trunk.transformer.blocks
    for index, block in enumerate(blocks):
        blocks[index] = ReentrantCheckpoint(block)
    batch = synthetic_batch(cfg)
    measured = saved_activation_bytes(cfg, model, model, batch)

    size, length = cfg.data.batch_size, cfg.data.seq_len
    shared_block_inputs = size * length**2 + 8 * size * length  # the boolean mask and the position ids
    predicted = (
        report.model.depth * block_input_bytes(report.model, report.layout)
        + shared_block_inputs
        + sum(t.bytes for t in report.outside_saved)
    )
    assert measured == pytest.approx(predicted, rel=ACTIVATION_TOLERANCE)
    lines = {line.category: line for line in report.memory}
    blocks_line = lines["activations: transformer blocks"]
    per_block = sum(t.bytes for t in report.block_saved)
    assert blocks_line.with_ac == report.model.depth * block_input_bytes(report.model, report.layout) + per_block
    assert blocks_line.without_ac == report.model.depth * per_block


# ---------------------------------------------------------------------------------------------- communication


COLLECTIVE_KINDS = ("allgather", "all_gather", "reduce_scatter", "allreduce", "all_reduce")


class CollectiveLog(TorchDispatchMode):
    """Calls and input bytes of every c10d collective that passes through the dispatcher."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.input_bytes: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if "c10d" in name and any(kind in name for kind in COLLECTIVE_KINDS):
            # The input operand: (output, input) for the *_base_ ops, (outputs, inputs) for allgather_,
            # (tensors, ...) for allreduce_, (input, ...) for the functional ops.
            operand = args[1] if name.endswith(("_base_", "allgather_")) else args[0]
            tensors = [t for t in tree_leaves(operand) if isinstance(t, torch.Tensor)]
            self.calls[name] += 1
            self.input_bytes[name] += sum(t.numel() * t.element_size() for t in tensors)
        return func(*args, **(kwargs or {}))


def ring_bytes_sent(op: str, size: int, group: int) -> float:
    """What one rank sends with ring algorithms for calls of ``op`` over ``group`` ranks with ``size`` input bytes."""
    if op.endswith("allreduce_"):
        return 2 * (group - 1) / group * size
    if "reduce_scatter" in op:  # the input is the full buffer
        return (group - 1) / group * size
    return (group - 1) * size  # all-gathers: the input is this rank's part


def measure_collectives(cfg, world: int, micro_steps: int) -> tuple[Counter[str], Counter[str]]:
    model, train_model, cp = parallel_model(cfg, world)
    batch = rank_batch(cfg, model, cp)
    with CollectiveLog() as log:
        for micro_step in range(micro_steps):
            with gradient_sync(train_model, enabled=micro_step == micro_steps - 1):
                forward_loss(cfg, train_model, batch).backward()
    return log.calls, log.input_bytes


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("world", "overrides", "expected"),
    [
        (
            4,
            ["experiment.precision=bf16", "experiment.grad_accum_steps=2"],
            {"c10d::_allgather_base_": ("FSDP all-gather", 4), "c10d::_reduce_scatter_base_": ("FSDP reduce", 4)},
        ),
        (
            4,
            ["experiment.distributed.strategy=hsdp", "experiment.distributed.dp_replicate=2"],
            {
                "c10d::_allgather_base_": ("FSDP all-gather", 2),
                "c10d::_reduce_scatter_base_": ("FSDP reduce", 2),
                "c10d::allreduce_": ("HSDP", 2),
            },
        ),
        (
            4,
            ["experiment.distributed.tp=2", "experiment.activation_checkpointing=true"],
            {
                "c10d::_allgather_base_": ("FSDP all-gather", 2),
                "c10d::_reduce_scatter_base_": ("FSDP reduce", 2),
                "_c10d_functional::all_gather_into_tensor": ("TP all-gather", 2),
                "_c10d_functional::reduce_scatter_tensor": ("TP reduce-scatter", 2),
                "_c10d_functional::all_reduce": ("TP all-reduce", 2),
            },
        ),
        (
            4,
            ["experiment.distributed.cp=2", "experiment.activation_checkpointing=true"],
            {
                "c10d::_allgather_base_": ("FSDP all-gather", 4),
                "c10d::_reduce_scatter_base_": ("FSDP reduce", 4),
                "c10d::allgather_": ("CP all-gather", 2),
                "c10d::allreduce_": ("CP all-reduce", 2),
            },
        ),
    ],
)
def test_collectives_match_what_one_optimizer_step_issues(world, overrides, expected):
    """Calls and bytes sent per collective kind over the forward/backward passes of one optimizer step."""
    cfg = small_config(*overrides)
    report = plan_report(cfg, gpus=world)
    micro_steps = cfg.experiment.grad_accum_steps

    calls, input_bytes = in_fake_world(world, measure_collectives, cfg, world, micro_steps)
    assert set(calls) == set(expected)
    for op, (prefix, group) in expected.items():
        planned = [c for c in report.collectives if c.name.startswith(prefix)]
        assert planned, f"the plan has no collective named {prefix}..."
        assert sum(c.calls_per_step for c in planned) == calls[op], op
        sent = ring_bytes_sent(op, input_bytes[op], group)
        assert sum(c.bytes_per_step for c in planned) == pytest.approx(sent, abs=1), op


def test_single_gpu_plan_has_no_collectives():
    assert plan_report(small_config(), gpus=1).collectives == ()


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "gpus", "message"),
    [
        (["experiment.distributed.dp_shard=2", "experiment.distributed.tp=2"], 8, "world size is 8"),
        (["experiment.distributed.tp=8"], 8, "num_heads=4"),
        (["experiment.distributed.cp=3"], 3, "seq_len=64"),
        (["experiment.distributed.tp=2", "constants.vocab_size=255"], 2, "dim 0 (255)"),
    ],
)
def test_impossible_meshes_are_rejected_with_the_offending_setting(overrides, gpus, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_report(small_config(*overrides), gpus=gpus)


def test_bad_arguments_are_rejected():
    cfg = small_config()
    with pytest.raises(ValueError, match="gpu_memory_gb"):
        plan_report(cfg, gpus=1, gpu_memory_gb=0)
    with pytest.raises(ValueError, match="gpus"):
        plan_report(cfg, gpus=0)
    with pytest.raises(ValueError, match="headroom"):
        plan_report(cfg, gpus=1, headroom=1.0)
    with pytest.raises(ConfigError, match="no TransformerBlock"):
        model_shape(nn.Linear(2, 2))


def test_frozen_parameters_have_no_gradient_or_optimizer_state():
    frozen_blocks = "trunk.transformer.blocks.0."
    with torch.device("meta"):
        model = instantiate(small_config().model)
    frozen = [param for name, param in model.named_parameters() if name.startswith(frozen_blocks)]
    numel = sum(param.numel() for param in frozen)
    full = memory_of(plan_report(small_config(), gpus=1))
    part = memory_of(plan_report(small_config(f"experiment.freeze=[{frozen_blocks}*]"), gpus=1))
    assert full["parameters"] == part["parameters"]
    assert full["gradients"] - part["gradients"] == 4 * numel
    assert full["optimizer state (AdamW)"] - part["optimizer state (AdamW)"] == 8 * numel + 4 * len(frozen)
    with pytest.raises(ConfigError, match=r"^experiment.freeze: freeze pattern 'trunk.blocks.\*' matches no"):
        plan_report(small_config("experiment.freeze=[trunk.blocks.*]"), gpus=1)


# ----------------------------------------------------------------------------------------- 7B sanity and output


def test_7b_fits_on_8_gpus_with_fsdp_only_with_activation_checkpointing():
    """Llama-2-7B's shape, micro-batch 2 x 4096, bf16, FSDP over 8 x 80 GiB (docs/planning.md compares)."""
    report = plan_report(load_config("configs/llm/7b.yaml"), gpus=8, gpu_memory_gb=80)
    assert report.model.num_params == 6_738_415_616  # Llama-2-7B's count
    memory = memory_of(report)
    assert memory["parameters"] == pytest.approx(4 * report.model.num_params / 8, rel=1e-3)
    assert memory["optimizer state (AdamW)"] == pytest.approx(2 * memory["parameters"], rel=1e-3)
    assert report.fits and report.fits_with(activation_checkpointing=True)
    assert not report.fits_with(activation_checkpointing=False)
    assert report.total(True) < 48 * GIB < report.total(False)

    single = plan_report(load_config("configs/llm/7b.yaml"), gpus=1, gpu_memory_gb=80)
    assert not single.fits  # 16 bytes per parameter alone is ~100 GiB


def test_format_and_main_print_every_category_and_the_verdict(capsys):
    report = plan_report(small_config("experiment.distributed.tp=2"), gpus=4)
    text = format_plan(report)
    for line in report.memory:
        assert line.category in text
    for collective in report.collectives:
        assert collective.name in text
    assert "fits" in text and "budget" in text

    assert plan_main(TINY, SMALL, gpus=1, gpu_memory_gb=80) == 0
    assert "verdict: fits" in capsys.readouterr().out
    assert plan_main("configs/llm/7b.yaml", [], gpus=1, gpu_memory_gb=80) == 1
    assert "does NOT fit" in capsys.readouterr().out


def test_budget_subtracts_headroom_and_reserved_memory():
    report = plan_report(small_config(), gpus=1, gpu_memory_gb=40, headroom=0.25, reserved_gib=2)
    assert report.budget_bytes == (40 * 0.75 - 2) * GIB
    assert math.isclose(report.gpu_memory_gib, 40)


def test_lumina_7b_fits_on_8_gpus_and_34b_needs_16():
    """configs/lumina: the 7B recipe fits 8 x 80 GiB with activation checkpointing; the 34B one does not (fp32
    master weights, gradients and AdamW state are 16 bytes a parameter, 64 GiB a GPU on 8), but fits on 16."""
    seven = plan_report(load_config("configs/lumina/7b.yaml"), gpus=8, gpu_memory_gb=80)
    assert seven.model.num_params == 7_013_666_816
    assert seven.fits and not seven.fits_with(activation_checkpointing=False)
    thirty_four = load_config("configs/lumina/34b.yaml")
    on_8 = plan_report(thirty_four, gpus=8, gpu_memory_gb=80)
    assert on_8.model.num_params == 34_294_308_864
    states = sum(memory_of(on_8)[name] for name in ("parameters", "gradients", "optimizer state (AdamW)"))
    assert states == pytest.approx(16 * on_8.model.num_params / 8, rel=1e-3) and states > 60 * GIB
    assert not on_8.fits
    assert plan_report(thirty_four, gpus=16, gpu_memory_gb=80).fits
