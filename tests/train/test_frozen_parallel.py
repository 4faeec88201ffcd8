"""Frozen parameters under 2-process data parallelism (torchrun, gloo/CPU): 3 steps of the tiny LLM with the token
embedding (tied to the head, in FSDP's root unit beside the final norm) and block 0's attention (half of an FSDP
unit) frozen. Frozen weights end bit-identical to the initial ones, every other weight moves."""

from fnmatch import fnmatchcase

import pytest
import torch
from parallel_runs import torchrun

from polymodal.config import load_config
from polymodal.train.trainer import Trainer

FROZEN = ["preprocessor.*", "trunk.transformer.blocks.0.attn.*"]
FREEZE_OVERRIDE = "+optim.optimizer.freeze=[" + ",".join(FROZEN) + "]"
RUN = ["experiment.total_steps=3", "experiment.ckpt_every=3", "experiment.eval_every=3"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, text_corpus, tiny_config_writer):
    directory = tmp_path_factory.mktemp("frozen")
    tiny_config_writer(directory, text_corpus)
    return directory


def is_frozen(name: str) -> bool:
    tied_to_embedding = name == "head.proj.weight"
    return tied_to_embedding or any(fnmatchcase(name, pattern) for pattern in FROZEN)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_frozen_weights_stay_bit_identical(strategy, workdir):
    out = workdir / strategy
    overrides = [f"experiment.output_dir={out}", *RUN, FREEZE_OVERRIDE]
    torchrun(2, workdir / "tiny.yaml", *overrides, "constants.batch_size=2", f"experiment.distributed.strategy={strategy}")
    initial = Trainer(load_config(workdir / "tiny.yaml", [*overrides[1:], f"experiment.output_dir={workdir}/init"]))
    trained = Trainer(load_config(workdir / "tiny.yaml", overrides))  # one process, the same global batch of 4
    trained.resume()
    assert trained.progress.step == 3
    before, after = initial.model.state_dict(), trained.model.state_dict()
    frozen = [name for name in before if is_frozen(name)]
    assert frozen and len(frozen) < len(before)
    for name in before:
        if is_frozen(name):
            assert torch.equal(after[name], before[name]), f"{name} moved"
        else:
            assert not torch.equal(after[name], before[name]), f"{name} did not train"
