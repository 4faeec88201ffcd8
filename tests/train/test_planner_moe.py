"""``polymodal plan`` on mixture-of-experts models: parameter counts, expert parallelism's memory and all-to-alls,
dropless capacities, counted here from the model's modules and the formulas of docs/planning.md."""

from __future__ import annotations

import pytest
import torch

from polymodal import cli
from polymodal.config import ConfigError, instantiate, load_config
from polymodal.models.layers.moe import MoEFeedForward
from polymodal.train.parallel.planner import FP32, format_plan, fsdp_shard_numel, plan_report

MOE = "configs/aimv2_moe/tiny.yaml"
DENSE = "configs/aimv2/tiny.yaml"
BATCH, PATCHES = 4, 64  # the micro-batch below; the tiny encoder's tokens per image (all patches)
DDP = [f"constants.batch_size={BATCH}", "experiment.distributed.strategy=ddp"]
FSDP = [f"constants.batch_size={BATCH}"]


def ep(size: int) -> list[str]:
    return [*FSDP, f"experiment.distributed.ep={size}"]


def moe_layers(config: str = MOE, overrides: list[str] = DDP) -> tuple[int, int, list[MoEFeedForward]]:
    """The model's distinct parameter count, its distinct parameter tensors and its MoE layers (meta device)."""
    with torch.device("meta"):
        model = instantiate(load_config(config, overrides).model)
    distinct = {id(p): p.numel() for p in model.parameters()}
    return sum(distinct.values()), len(distinct), [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def per_expert(layer: MoEFeedForward) -> int:
    return sum(p[0].numel() for p in layer.experts.parameters())


def memory_of(report) -> dict[str, int]:
    return {line.category: line.without_ac for line in report.memory}


def all_to_all(report):
    found = [c for c in report.collectives if c.group == "ep"]
    return found[0] if found else None


def test_total_and_active_parameters_count_router_and_top_k_experts():
    total, _, layers = moe_layers()
    assert len(layers) == 4 and all(layer.num_experts == 4 and layer.top_k == 1 for layer in layers)
    inactive = sum((layer.num_experts - layer.top_k) * per_expert(layer) for layer in layers)
    experts = sum(layer.num_experts * per_expert(layer) for layer in layers)
    report = plan_report(load_config(MOE, DDP), gpus=1)
    assert report.model.num_params == total
    assert sum(layer.active_params for layer in report.model.moe_layers) == sum(
        sum(p.numel() for p in layer.router.parameters()) + layer.top_k * per_expert(layer) for layer in layers
    )
    text = format_plan(report)
    assert f"{(total - inactive) / 1e9:.3g} B parameters active per token of {total / 1e9:.3g} B" in text
    assert f"experts hold {experts / 1e9:.3g} B ({100 * experts / total:.1f}%)" in text
    assert "4 MoE layer(s): 4 experts top-1, C=256 slots (dropless, planned at worst case" in text


@pytest.mark.parametrize("size", [1, 2, 4])
def test_expert_parallel_slices_are_sharded_over_the_ranks_beside_ep(size):
    """4 GPUs under FSDP: an expert weight is cut into E/ep experts, FSDP-sharded over the 4/ep other ranks; every
    other parameter over all 4. The experts' FSDP traffic runs on that smaller group, one unit per MoE layer."""
    with torch.device("meta"):
        model = instantiate(load_config(MOE, ep(size)).model)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    experts = {name for name in shapes if ".experts." in name}
    held = sum(
        fsdp_shard_numel((shape[0] // size, *shape[1:]), 4 // size) if name in experts else fsdp_shard_numel(shape, 4)
        for name, shape in shapes.items()
    )  # every parameter is trained
    report = plan_report(load_config(MOE, ep(size)), gpus=4)
    memory = memory_of(report)
    assert memory["parameters"] == memory["gradients"] == FP32 * held
    assert memory["optimizer state (AdamW)"] == 2 * FP32 * held + FP32 * len(shapes)
    gathers = {c.name: c for c in report.collectives if c.name.startswith("FSDP all-gather")}
    if size in (1, 4):  # ep=1: experts gathered with their blocks; ep=4: each rank holds its slice whole
        assert "FSDP all-gather expert params (forward)" not in gathers
        return
    expert_gather = gathers["FSDP all-gather expert params (forward)"]
    expert_shard = sum(fsdp_shard_numel((shapes[n][0] // size, *shapes[n][1:]), 4 // size) for n in experts)
    assert (expert_gather.group, expert_gather.group_size) == ("dp_shard_mod_ep·cp", 4 // size)
    assert expert_gather.calls_per_step == len(moe_layers(MOE, ep(size))[2])
    assert expert_gather.bytes_per_step == (4 // size - 1) * expert_shard * FP32


@pytest.mark.parametrize(
    ("ep", "dropless", "overrides", "capacity"),
    [
        (2, "worst", [], BATCH * PATCHES),  # a token's top_k experts are distinct: at most N slots per expert
        (2, "balanced", ["experiment.activation_checkpointing=true"], BATCH * PATCHES // 4),
        (2, "worst", ["model.models.image_encoder.trunk.transformer.moe.capacity_factor=1.5"], 96),
    ],
)
def test_all_to_alls_send_the_dispatch_buffer_twice_forward_twice_backward(ep, dropless, overrides, capacity):
    cfg = load_config(MOE, [*FSDP, f"experiment.distributed.ep={ep}", *overrides])
    report = plan_report(cfg, gpus=2, dropless=dropless)
    _, _, layers = moe_layers(MOE, DDP + overrides)
    assert [layer.capacity for layer in report.model.moe_layers] == [capacity] * len(layers)
    per_layer = 4 + (2 if report.layout.activation_checkpointing else 0)  # AC recomputes the forward's two
    buffer = 4 * capacity * layers[0].router.in_features * FP32  # [E, C, D], fp32 run
    collective = all_to_all(report)
    assert (collective.group_size, collective.calls_per_step) == (ep, per_layer * len(layers))
    assert collective.bytes_per_step == round(per_layer * len(layers) * (ep - 1) / ep * buffer)


def test_a_worst_case_dropless_plan_holds_more_activations_than_a_balanced_one():
    cfg = load_config(MOE, DDP)
    worst, balanced = (plan_report(cfg, gpus=2, dropless=rule) for rule in ("worst", "balanced"))
    assert memory_of(worst)["activations: units"] > memory_of(balanced)["activations: units"]
    assert all_to_all(worst) is None  # ep=1: no all-to-all


def test_a_dense_config_has_no_moe_lines_and_refuses_expert_parallelism():
    report = plan_report(load_config(DENSE, DDP), gpus=2)
    assert report.model.moe_layers == () and all_to_all(report) is None
    assert "mixture of experts" not in format_plan(report)
    with pytest.raises(ConfigError, match=r"expert parallelism \(ep=2\) needs MoE layers"):
        plan_report(load_config(DENSE, ep(2)), gpus=2)


def test_an_expert_parallel_size_that_does_not_divide_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"ep=3 must divide dp_shard=2"):
        plan_report(load_config(MOE, ep(3)), gpus=2)
    with pytest.raises(ConfigError, match=r"ep=8 must divide .*num_experts=4"):
        plan_report(load_config(MOE, ep(8)), gpus=8)
    with pytest.raises(ConfigError, match=r"expert parallelism needs strategy fsdp or hsdp"):
        plan_report(load_config(MOE, [*DDP, "experiment.distributed.ep=2"]), gpus=2)


def test_the_cli_plans_expert_parallelism_and_a_balanced_dropless_capacity(capsys):
    code = cli.main(["plan", "--config", MOE, "--gpus", "2", "--dropless-capacity", "balanced", *ep(2)])
    out = capsys.readouterr().out
    assert code == 0
    assert "C=64 slots (dropless, planned at balanced load)" in out and "experts sharded over ep=2 ranks" in out
    assert "EP all-to-all expert tokens" in out


def saved_storage_bytes(run, excluded: list[torch.Tensor]):
    """Bytes of the distinct storages autograd saves while ``run()`` runs (those of ``excluded`` left out), and
    what ``run()`` returns."""
    skip = {t.untyped_storage().data_ptr() for t in excluded}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return sum(saved.values()), result


def planned_and_real_saved_bytes(config: str) -> tuple[int, int]:
    """Activations a plan (worst-case dropless) gives for ``config`` at the test's micro-batch, and what a real
    forward + loss saves, with zero router weights: every expert ties and top-1 takes expert 0 for every token."""
    cfg = load_config(config, [f"constants.batch_size={BATCH}"])
    memory = memory_of(plan_report(cfg, gpus=1, dropless="worst"))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    layers = [layer for layer in model.modules() if isinstance(layer, MoEFeedForward)]
    for layer in layers:
        torch.nn.init.zeros_(layer.router.weight)
    batch = instantiate(cfg.data, _target_=f"{cfg.data._target_}.largest_batch", device="cpu").batch
    batch["rgb"] = torch.rand_like(batch["rgb"])
    batch["caption_ids"] = torch.randint(1, 100, batch["caption_ids"].shape)
    excluded = [*model.parameters(), *model.buffers(), *(v for v in batch.values() if isinstance(v, torch.Tensor))]
    outputs = []

    def step():
        outputs.append(model(dict(batch)))
        return instantiate(cfg.loss)(outputs[-1])

    saved, _ = saved_storage_bytes(step, excluded)
    if layers:
        assert outputs[0]["moe_stats"]["max_load_fraction"].tolist() == [1.0] * len(layers)  # all on one expert
    return memory["activations: units"] + memory["activations: outside units"], saved


def test_the_worst_case_plan_of_the_experts_saves_what_a_real_step_with_every_token_on_one_expert_saves():
    """The MoE layers' share: the MoE config less the dense one, planned and real. (Both plans are 85,120 bytes
    short of the real runs in AIM's dense parts, which this difference leaves out.)"""
    moe_planned, moe_real = planned_and_real_saved_bytes(MOE)
    dense_planned, dense_real = planned_and_real_saved_bytes(DENSE)
    assert moe_planned - dense_planned == moe_real - dense_real > 0
