"""`experiment.distributed.ep` in the trainer: a tiny mixture-of-experts LLM trains under expert parallelism like
the same layout without it, and its checkpoints move between expert-parallel sizes.

Real `torchrun` processes on gloo/CPU. The reference for an expert-parallel run is the same processes without
expert parallelism, not one process: the routers' balancing statistics are taken per rank (per forward pass), so the
auxiliary loss of two ranks is not that of one process over both ranks' batches.
"""

import json
import subprocess
import sys

import pytest
import torch
from parallel_runs import assert_losses_match, free_port, losses, torchrun, torchrun_env
from safetensors.torch import load_file
from test_parallel_equivalence import drop_checkpoints_after

from polymodal.config import load_config
from polymodal.config.errors import ConfigError
from polymodal.train.parallel.mesh import ParallelDims

MOE_OVERRIDES = [
    "+model.moe={num_experts: 4, top_k: 2, capacity_factor: null}",
    "loss._target_=polymodal.models.meta.WeightedObjectives",
    "~loss.z_loss_weight",
    "+loss.objectives.lm._target_=polymodal.objectives.lm.NextTokenLoss",
    "+loss.objectives.lm.z_loss_weight=1.0e-4",
    "model.loss_z_loss_weight=${loss.objectives.lm.z_loss_weight}",
    "+loss.objectives.moe._target_=polymodal.objectives.moe.MoEAuxLoss",
    "+loss.objectives.moe.balance_weight=0.01",
    "+loss.objectives.moe.z_loss_weight=0.001",
]
EP2 = "experiment.distributed.ep=2"

META_INIT = "experiment.distributed.meta_init=true"  # experts initialised in place, sharded
HSDP = ["experiment.distributed.strategy=hsdp", "experiment.distributed.dp_replicate=2"]

# name: (processes, per-rank batch, overrides of the run, name of its reference without expert parallelism)
LAYOUTS = {
    "fsdp-2-ep-2": (2, 2, [EP2], "fsdp-2"),
    "fsdp-2-ep-2-activation-checkpointing": (2, 2, [EP2, "experiment.activation_checkpointing=true"], "fsdp-2"),
    "fsdp-2-ep-2-meta-init": (2, 2, [EP2, META_INIT], "fsdp-2-meta-init"),
    "fsdp-4-ep-2": (4, 1, [EP2], "fsdp-4"),
    "hsdp-2x2-ep-2": (4, 1, [EP2, *HSDP], "hsdp-2x2"),
}
REFERENCES = {
    "fsdp-2": (2, 2, []),
    "fsdp-2-meta-init": (2, 2, [META_INIT]),
    "fsdp-4": (4, 1, []),
    "hsdp-2x2": (4, 1, HSDP),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, text_corpus, tiny_config_writer):
    directory = tmp_path_factory.mktemp("expert_parallel")
    tiny_config_writer(directory, text_corpus)
    return directory


def grad_norms(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["grad_norm"] for r in records if r["split"] == "train"}


def train(workdir, name: str, nproc: int, batch: int, overrides: list[str] = ()):
    out = workdir / name
    if not (out / "metrics.jsonl").is_file():
        torchrun(nproc, workdir / "tiny.yaml", *MOE_OVERRIDES, f"experiment.output_dir={out}",
                 f"constants.batch_size={batch}", *overrides)  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_expert_parallel_trains_like_the_same_layout_without_it(layout, workdir):
    nproc, batch, overrides, reference_name = LAYOUTS[layout]
    reference = train(workdir, reference_name, *REFERENCES[reference_name])
    run = train(workdir, layout, nproc, batch, overrides)
    assert_losses_match(losses(run), losses(reference), range(1, 9))
    # AdamW hides a constant factor on a gradient; the clipped global norm shows it
    assert_losses_match(grad_norms(run), grad_norms(reference), range(1, 9))
    records = (run / "metrics.jsonl").read_text()
    assert '"moe/balance_loss"' in records and '"moe/router_z_loss"' in records


def export(run, out):
    subprocess.run(
        [sys.executable, "-m", "polymodal", "export", "--checkpoint", str(run), "--out", str(out)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    return load_file(str(out / "model.safetensors"))


def test_an_expert_parallel_checkpoint_holds_the_whole_experts_and_resumes_at_any_ep_size(workdir):
    with_ep = train(workdir, "fsdp-2-ep-2", 2, 2, [EP2])
    without_ep = train(workdir, "fsdp-2", *REFERENCES["fsdp-2"])

    weights = export(with_ep, workdir / "export-ep")
    reference_weights = export(without_ep, workdir / "export-no-ep")
    assert weights.keys() == reference_weights.keys()
    assert weights["trunk.transformer.blocks.0.mlp.experts.w1"].shape[0] == 4
    for name, value in weights.items():
        torch.testing.assert_close(value, reference_weights[name], rtol=1e-3, atol=1e-5)

    for source, target_overrides, name in [(with_ep, [], "ep-2-to-1"), (without_ep, [EP2], "ep-1-to-2")]:
        out = workdir / name
        subprocess.run(["cp", "-r", str(source), str(out)], check=True)
        drop_checkpoints_after(out, 4)
        torchrun(2, workdir / "tiny.yaml", *MOE_OVERRIDES, f"experiment.output_dir={out}", "constants.batch_size=2",
                 *target_overrides)  # fmt: skip
        assert_losses_match(losses(out), losses(with_ep), range(5, 9))


def test_a_model_without_experts_refuses_expert_parallelism(workdir):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "polymodal", "train", "--config", str(workdir / "tiny.yaml"), EP2,
        f"experiment.output_dir={workdir / 'dense-ep-2'}", "constants.batch_size=2",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=torchrun_env())
    assert result.returncode != 0
    assert "CausalLM has no mixture-of-experts layers; set experiment.distributed.ep=1" in result.stderr


@pytest.mark.parametrize(
    ("settings", "world", "message"),
    [
        ({"strategy": "ddp", "ep": 2}, 2, "needs strategy fsdp or hsdp"),
        ({"ep": 3}, 4, "ep=3 must divide dp_shard=4"),
        ({"ep": 4, "tp": 2}, 4, "ep=4 must divide dp_shard=2"),
    ],
)
def test_bad_expert_parallel_layouts_are_refused_in_one_line(settings, world, message, workdir):
    overrides = [f"experiment.distributed.{key}={value}" for key, value in settings.items()]
    exp = load_config(workdir / "tiny.yaml", overrides).experiment
    with pytest.raises(ConfigError, match=message):
        ParallelDims.from_config(exp.distributed, world)
