"""Every parallel layout trains the tiny LLM like one process does, and checkpoints move between layouts.

Real `torchrun` processes on gloo/CPU. The global batch is 4 sequences in every layout (per-rank batch × data-
parallel ranks), so each layout sees exactly the single process's data. Losses are compared per step with a
relative tolerance of 1e-4 over all 8 steps: the layouts differ only in fp32 reduction order (sharded sums,
all-reduces), which moves the fifth significant digit after a few Adam steps at most.
"""

import shutil
import subprocess
import sys

import pytest
import torch
from parallel_runs import assert_losses_match, losses, torchrun
from safetensors.torch import load_file

from polymodal.config import load_config
from polymodal.train.trainer import Trainer

# name: (processes, per-rank batch, overrides)
LAYOUTS = {
    "ddp-2": (2, 2, ["experiment.distributed.strategy=ddp"]),
    "fsdp-2": (2, 2, []),
    "fsdp-2-accumulate-2": (2, 1, ["experiment.grad_accum_steps=2"]),
    "fsdp-2-activation-checkpointing": (2, 2, ["experiment.activation_checkpointing=true"]),
    "hsdp-2x2": (4, 1, ["experiment.distributed.strategy=hsdp", "experiment.distributed.dp_replicate=2"]),
    "tp-2": (2, 4, ["experiment.distributed.tp=2"]),
    "tp-2-loss-parallel": (2, 4, ["experiment.distributed.tp=2", "experiment.distributed.loss_parallel=true"]),
    "cp-2": (2, 4, ["experiment.distributed.cp=2"]),
    "fsdp-2xtp-2": (4, 2, ["experiment.distributed.tp=2"]),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, text_corpus, tiny_config_writer):
    directory = tmp_path_factory.mktemp("parallel")
    tiny_config_writer(directory, text_corpus)
    return directory


@pytest.fixture(scope="module")
def reference(workdir):
    """One process, global batch 4, 8 steps, checkpoints at 4 and 8."""
    trainer = Trainer(load_config(workdir / "tiny.yaml", [f"experiment.output_dir={workdir}/single"]))
    trainer.fit()
    return losses(workdir / "single")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout, workdir, reference):
    nproc, batch, overrides = LAYOUTS[layout]
    out = workdir / layout
    torchrun(nproc, workdir / "tiny.yaml", f"experiment.output_dir={out}", f"constants.batch_size={batch}", *overrides)
    assert_losses_match(losses(out), reference, range(1, 9))
    assert (out / "logs" / f"rank{nproc - 1}.log").is_file()


def drop_checkpoints_after(run_dir, step: int) -> None:
    """Make a finished run look like one stopped right after its step-``step`` checkpoint."""
    for checkpoint in (run_dir / "checkpoints").glob("step_*"):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)


def test_fsdp_checkpoint_resumes_on_one_process_and_exports(workdir, reference):
    out = workdir / "reshard-2-to-1"
    torchrun(2, workdir / "tiny.yaml", f"experiment.output_dir={out}", "constants.batch_size=2")
    export = workdir / "export-from-fsdp"
    subprocess.run(
        [sys.executable, "-m", "polymodal", "export", "--checkpoint", str(out), "--out", str(export)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    single = Trainer(load_config(workdir / "tiny.yaml", [f"experiment.output_dir={workdir}/single"]))
    single.resume()
    exported = load_file(str(export / "model.safetensors"))
    for name, value in exported.items():
        torch.testing.assert_close(value, single.model.state_dict()[name], rtol=1e-3, atol=1e-5)

    drop_checkpoints_after(out, 4)
    resumed = Trainer(load_config(workdir / "tiny.yaml", [f"experiment.output_dir={out}", "constants.batch_size=4"]))
    resumed.fit()
    assert_losses_match(losses(out), reference, range(5, 9))


def test_single_process_checkpoint_resumes_on_fsdp(workdir, reference):
    out = workdir / "reshard-1-to-2"
    shutil.copytree(workdir / "single", out)
    drop_checkpoints_after(out, 4)
    torchrun(2, workdir / "tiny.yaml", f"experiment.output_dir={out}", "constants.batch_size=2")
    assert_losses_match(losses(out), reference, range(5, 9))
