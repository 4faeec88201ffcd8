"""The measured planner (any model that is not a transformer LM) against real runs of the same models on the CPU.

Real runs are counted independently of the planner: saved tensors by ``data_ptr`` of their storages (the planner
cannot use it: fake tensors have none), states by the tensors a real AdamW step leaves, the step's peak by the
allocation events of torch's profiler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from small_llm import SMALL, TINY
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from polymodal import cli
from polymodal.config import ConfigError, instantiate, load_config
from polymodal.train.parallel.planner import (
    ANALYTIC,
    FP32,
    MEASURED,
    SavedStorages,
    fsdp_shard_numel,
    measure_model,
    plan_report,
)
from polymodal.train.parallel.planner import report as report_module
from polymodal.train.parallel.planner.known_values import KnownValues
from polymodal.train.parallel.planner.live_bytes import LiveBytes
from polymodal.train.parallel.plans import fsdp_units

SHIPPED = [
    "fourm/tiny",
    "fourm/vit_classify_tiny",
    "fourm/4m-b_mod7",
    "fourm/4m-b_mod21",
    "fourm/4m-l_mod7",
    "fourm/4m-l_mod21",
    "fourm/4m-xl_mod7",
    "fourm/4m-xl_mod21",
    "aimv2/tiny",
    "aimv2/large",
    "aimv2_moe/tiny",
    "aimv2_moe/base",
    "tokenizers/rgb_tiny",
    "tokenizers/depth_tiny",
    "tokenizers/normal_tiny",
    "tokenizers/semseg_tiny",
    "llm/tiny",
    "llm/125m",
    "llm/1b",
    "llm/7b",
]
FOURM_TINY = ("configs/fourm/tiny.yaml", ["constants.batch_size=8"])
RGB_TINY = ("configs/tokenizers/rgb_tiny.yaml", ["constants.batch_size=4"])
LOSS_SCALARS = 8  # the LM loss's int64 count of labelled positions (it divides the sums): not in the analytic list


def memory_of(report, activation_checkpointing: bool = False) -> dict[str, int]:
    return {line.category: line.with_ac if activation_checkpointing else line.without_ac for line in report.memory}


def activations(report, activation_checkpointing: bool = False) -> int:
    memory = memory_of(report, activation_checkpointing)
    return memory.get("activations: units", 0) + memory["activations: outside units"]


# ---------------------------------------------------------------------------------------------- every config


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_is_planned_and_the_cli_says_whether_it_fits(name, monkeypatch, capsys):
    reports = []

    def keep(*args, **kwargs):
        reports.append(plan_report(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(report_module, "plan_report", keep)
    code = cli.main(["plan", "--config", f"configs/{name}.yaml"])
    out, err = capsys.readouterr()

    (report,) = reports
    assert report.method == (ANALYTIC if name.startswith("llm/") else MEASURED)
    parameters = memory_of(report)["parameters"]
    assert report.total(False) > parameters and report.total(True) > parameters
    assert code == (0 if report.fits else 1)
    assert out.rstrip().endswith(f"verdict: {'fits' if report.fits else 'does NOT fit'} in 80 GiB per GPU")
    assert report.method in out.splitlines()[0] and err == ""


# ------------------------------------------------------------------------------------- real runs on the CPU


def real_batch(cfg, model: nn.Module) -> dict:
    """The data's largest batch with real content: random pixels, random token ids in each 4M vocabulary."""
    torch.manual_seed(1)
    batch = instantiate(cfg.data, _target_=f"{cfg.data._target_}.largest_batch", device="cpu").batch
    for name, value in batch.items():
        if isinstance(value, dict) and not value["tensor"].is_floating_point():
            value["tensor"] = torch.randint(1, model.modalities[name].vocab_size, value["tensor"].shape)
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            batch[name] = torch.rand_like(value)
    return batch


def storages(tensors) -> dict[int, int]:
    """data_ptr -> bytes of the distinct storages behind ``tensors``."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def saved_bytes(cfg, model: nn.Module, batch: dict) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd saves in a real forward + loss (parameters, buffers and the
    batch's tensors left out), and the loss."""
    excluded = storages([*model.parameters(), *model.buffers(), *tensors_of(batch)])
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.update({ptr: size for ptr, size in storages([tensor]).items() if ptr not in excluded})
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = instantiate(cfg.loss)(model(dict(batch)))
    return sum(saved.values()), loss


def tensors_of(batch: dict) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(batch) if isinstance(leaf, torch.Tensor)]


def real_model(cfg) -> nn.Module:
    torch.manual_seed(0)
    return instantiate(cfg.model)


@pytest.mark.parametrize(("path", "overrides"), [FOURM_TINY, RGB_TINY])
def test_saved_activations_and_states_equal_a_real_step(path, overrides, single_thread):
    cfg = load_config(path, overrides)
    report = plan_report(cfg, gpus=1)
    planned = memory_of(report)

    model = real_model(cfg)
    optimizer = instantiate(cfg.optim.optimizer, model=model)
    saved, loss = saved_bytes(cfg, model, real_batch(cfg, model))
    loss.backward()
    optimizer.step()
    params = list(model.parameters())
    assert activations(report) == saved
    assert planned["parameters"] == sum(storages(params).values())
    assert planned["gradients"] == sum(storages(p.grad for p in params).values())
    state = [t for s in optimizer.state.values() for t in s.values()]
    assert planned["optimizer state (AdamW)"] == sum(storages(state).values())
    assert planned["batch"] == sum(storages(tensors_of(real_batch(cfg, model))).values())


def test_bf16_autocast_saves_what_a_real_autocast_forward_saves(single_thread):
    """One GPU with bf16: autocast over fp32 parameters, weight copies and all (the fake run uses the CPU's
    autocast, whose rules the real run follows too)."""
    cfg = load_config(FOURM_TINY[0], [*FOURM_TINY[1], "experiment.precision=bf16"])
    planned = activations(plan_report(cfg, gpus=1))

    model = real_model(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved, _ = saved_bytes(cfg, model, real_batch(cfg, model))
    assert planned == saved


def real_peak_bytes(step: Callable[[], None]) -> int:
    """The peak of the bytes allocated (and not yet freed) while ``step`` runs, from the profiler's events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    allocated = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        allocated += event.nbytes()
        peak = max(peak, allocated)
    return peak


def test_the_step_peak_equals_a_real_step(single_thread):
    """Saved tensors plus temporaries (outputs kept for the step, gradients in flight) against what a real step
    allocates; parameter gradients are dropped as they arrive, as the plan counts them on their own line."""
    cfg = load_config(*FOURM_TINY)
    report = plan_report(cfg, gpus=1)
    planned_peak = activations(report) + memory_of(report)["temporaries at the peak"]

    model = real_model(cfg)
    batch = real_batch(cfg, model)
    for param in model.parameters():
        param.register_post_accumulate_grad_hook(lambda param: setattr(param, "grad", None))

    def step() -> None:
        output = model(dict(batch))
        loss, _ = instantiate(cfg.loss)(output)
        loss.backward()

    assert real_peak_bytes(step) == pytest.approx(planned_peak, abs=64)  # a few scalars of the real loss


class Reentrant(nn.Module):
    """A unit checkpointed the reentrant way, which saves the unit's inputs where the hooks see them."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, *args):
        return checkpoint(self.unit, *args, use_reentrant=True)


def checkpoint_units_but(model: nn.Module, kept: int) -> None:
    names = {id(module): name for name, module in model.named_modules()}
    for index, unit in enumerate(fsdp_units(model)):
        if index != kept:
            parent, _, attribute = names[id(unit)].rpartition(".")
            setattr(model.get_submodule(parent), attribute, Reentrant(unit))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_checkpointed_activations_equal_real_checkpointed_runs(single_thread):
    """With activation checkpointing each unit keeps its inputs and one unit at a time saves its tensors again:
    the plan is the real run with every unit checkpointed but the one whose recomputation saves the most."""
    cfg = load_config(*FOURM_TINY)
    report = plan_report(cfg, gpus=1)
    planned = activations(report, activation_checkpointing=True)

    measured = []
    for kept in range(report.model.num_units):
        model = real_model(cfg)
        checkpoint_units_but(model, kept)
        measured.append(saved_bytes(cfg, model, real_batch(cfg, model))[0])
    assert planned == max(measured)
    assert planned < activations(report)


# ------------------------------------------------------------------------------------- the two paths agree


@pytest.mark.parametrize(
    ("gpus", "overrides"),
    [(1, []), (1, ["experiment.precision=bf16"]), (4, ["experiment.precision=bf16"])],  # FSDP mixed precision
)
def test_measuring_a_transformer_lm_agrees_with_its_analytic_plan(gpus, overrides):
    """The analytic formulas are checked against real runs in test_planner.py; measured, the same LM saves the
    same, except that the token ids count as the batch and the loss's scalars as activations. The LM data's
    largest batch has one document per row, so it is planned with ``mask="causal"`` (no mask saved)."""
    cfg = load_config(TINY, [*SMALL, *overrides])
    analytic = plan_report(cfg, gpus=gpus, mask="causal")
    lines = memory_of(analytic)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    measured = measure_model(cfg, model, {id(p) for p in model.parameters()}, analytic.layout).step.saved

    ids = 8 * cfg.data.batch_size * cfg.data.seq_len  # the head saves its own copy of the labelled targets
    expected = (
        lines["activations: transformer blocks"]
        + lines["activations: embedding, head, loss"]
        + lines.get("bf16 weight copies (autocast)", 0)
    )
    assert measured.outside + measured.in_units == expected - ids + LOSS_SCALARS


# ----------------------------------------------------------------------------------- sharding and refusals


def test_fsdp_states_are_rank_0_shards_of_every_parameter():
    """Uneven shards over 3 ranks: the measured path shards as the LM path does (``fsdp_shard_numel``)."""
    cfg = load_config(*FOURM_TINY)
    report = plan_report(cfg, gpus=3)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    shapes = [tuple(p.shape) for p in model.parameters()]
    shard = sum(fsdp_shard_numel(shape, 3) for shape in shapes)
    units = sorted((sum(p.numel() for p in unit.parameters()) for unit in fsdp_units(model)), reverse=True)
    root = sum(math.prod(shape) for shape in shapes) - sum(units)

    memory = memory_of(report)
    assert memory["parameters"] == memory["gradients"] == FP32 * shard
    assert memory["optimizer state (AdamW)"] == 2 * FP32 * shard + FP32 * len(shapes)
    assert memory["gathered parameters (FSDP)"] == FP32 * (root + units[0] + units[1])
    gathers = [c for c in report.collectives if c.name.startswith("FSDP all-gather")]
    assert [c.calls_per_step for c in gathers] == [len(units) + 1] * 2
    assert all(c.bytes_per_step == 2 * FP32 * shard for c in gathers)


FOURM = "configs/fourm/tiny.yaml"


@pytest.mark.parametrize(
    ("path", "overrides", "message"),
    [
        (FOURM, ["experiment.distributed.tp=2"], "no tensor-parallel plan for FourM; set experiment.distributed.tp=1"),
        (FOURM, ["experiment.distributed.cp=2"], "no context-parallel plan for FourM; set experiment.distributed.cp=1"),
        (
            FOURM,
            ["data._target_=polymodal.data.multimodal.imagefolder.ImageFolderDataset"],
            "polymodal.data.multimodal.imagefolder.ImageFolderDataset has no largest_batch(): the planner cannot make "
            "a micro-batch of its data",
        ),
        (
            "configs/tokenizers/rgb_tiny.yaml",
            ["constants.image_size=60"],
            "measuring ImageTokenizer on the meta device failed: ValueError: rgb image size 60x60 is not a positive "
            "multiple of the tokenizer's downsampling factor 8",
        ),
    ],
)
def test_what_cannot_be_planned_is_one_error_line(path, overrides, message, capsys):
    assert cli.main(["plan", "--config", path, "--gpus", "2", *overrides]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"error: {message}\n")
    with pytest.raises(ConfigError):
        plan_report(load_config(path, overrides), gpus=2)


def test_a_run_that_does_not_fit_exits_1(capsys):
    """4M-B on one 16 GiB GPU: bf16 autocast over fp32 weights, micro-batch 128."""
    assert cli.main(["plan", "--config", "configs/fourm/4m-b_mod7.yaml", "--gpus", "1", "--gpu-memory", "16"]) == 1
    out, err = capsys.readouterr()
    assert out.rstrip().endswith("verdict: does NOT fit in 16 GiB per GPU") and err == ""


# ------------------------------------------------------------------------------------------ the machinery


def test_storages_are_counted_once_by_identity_on_the_meta_device():
    recorder = SavedStorages([])
    base = torch.empty(4, 8, device="meta")
    twin = torch.empty(4, 8, device="meta")  # same size, another storage
    assert recorder.keys([base, base[1:], base.t(), base.view(32)]) == {recorder.key(base)}
    assert recorder.bytes(recorder.keys([base, base.t(), twin])) == 2 * 4 * 8 * 4

    gone = recorder.key(torch.empty(8, device="meta"))  # the recorder keeps its storage alive...
    assert recorder.key(torch.empty(8, device="meta")) != gone  # ...so no later storage takes its identity


def test_shapes_that_follow_known_values_resolve_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), KnownValues() as values:
        ids = torch.arange(12)
        selected = (ids % 3 == 0).view(3, 4)
        hidden = torch.empty(3, 4, 5)
        assert hidden[selected].shape == (4, 5)
        assert values.value(selected.flatten()).tolist() == (torch.arange(12) % 3 == 0).tolist()
        assert int(selected.sum()) == 4
        assert torch.bincount(hidden.argmax(-1).flatten(), minlength=7).shape == (7,)  # unknown: read as zeros
        assert not bool((hidden > 0).any())
        assert values.value(torch.empty(3, dtype=torch.long)) is None  # uninitialised memory is no value
        with pytest.raises(ConfigError, match="cannot be planned"):  # a shape autograd sees, from activations
            hidden.requires_grad_()[hidden.sum(-1) > 0]


def test_scalars_computed_from_known_values_are_known_on_fake_tensors():
    """The gradient backward starts from and the loss's weighting are known, so checks on them decide as in a
    real step; a scalar computed from activations stays unknown."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), KnownValues() as values:
        labelled = torch.arange(10) < 4
        hidden = torch.empty(3, requires_grad=True)
        loss = hidden.sum() / labelled.sum()
        seed = torch.ones_like(loss)  # its value does not read the loss's
        per_token = seed / labelled.sum()
        known = values.value(seed), values.value(per_token)
        assert bool(torch.isclose(0.5 * per_token, 0.125 * seed))
        assert values.value(loss) is None
        assert values.value(torch.empty((), dtype=torch.float32)) is None  # uninitialised memory is no value
    assert [value.tolist() for value in known] == [1.0, 0.25]


def test_live_bytes_counts_new_storages_until_their_last_tensor_dies():
    from torch._subclasses.fake_tensor import FakeTensorMode

    activation = 8 * 64 * 4
    with FakeTensorMode():
        weight = torch.empty(64, 64)
        with LiveBytes() as live:
            view = weight.t()  # a view of a storage made before: not counted
            inputs = torch.empty(8, 64)
            product = inputs @ view
            alias = product[1:]
            assert live.live == 2 * activation
            del product
            assert live.live == 2 * activation  # the alias holds the product's storage
            del alias, inputs
            assert live.live == 0
    assert live.peak == 2 * activation
