"""``experiment.freeze`` under 2-process data parallelism (torchrun, gloo/CPU): 3 steps of the tiny LLM with the token
embedding (tied to the head, in FSDP's root unit beside the final norm) and block 0's attention (half of an FSDP
unit) frozen. Frozen weights end bit-identical to the initial ones, every other weight moves. Before the trainer
froze the bare model, DDP (wrapped while every parameter still required grad) stopped at step 2 waiting for the
frozen parameters' gradients."""

from fnmatch import fnmatchcase

import pytest
import torch
from parallel_runs import torchrun

from polymodal.config import ConfigError, load_config
from polymodal.train.trainer import Trainer

FROZEN = ["preprocessor.*", "trunk.transformer.blocks.0.attn.*"]
RUN = ["experiment.total_steps=3", "experiment.ckpt_every=3", "experiment.eval_every=3"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, text_corpus, tiny_config_writer):
    directory = tmp_path_factory.mktemp("frozen")
    tiny_config_writer(directory, text_corpus)
    return directory


def is_frozen(name: str) -> bool:
    tied_to_embedding = name == "head.proj.weight"
    return tied_to_embedding or any(fnmatchcase(name, pattern) for pattern in FROZEN)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_frozen_weights_stay_bit_identical(strategy, workdir):
    config, out = workdir / "tiny.yaml", workdir / strategy
    overrides = [*RUN, "experiment.freeze=[" + ",".join(FROZEN) + "]"]
    per_rank = ["constants.batch_size=2", f"experiment.distributed.strategy={strategy}"]
    torchrun(2, config, f"experiment.output_dir={out}", *overrides, *per_rank)
    initial = Trainer(load_config(config, [f"experiment.output_dir={workdir}/init", *overrides]))
    trained = Trainer(load_config(config, [f"experiment.output_dir={out}", *overrides]))  # same global batch of 4
    trained.resume()
    assert trained.progress.step == 3
    before, after = initial.model.state_dict(), trained.model.state_dict()
    assert 0 < sum(map(is_frozen, before)) < len(before)
    for name in before:
        if is_frozen(name):
            assert torch.equal(after[name], before[name]), f"{name} moved"
        else:
            assert not torch.equal(after[name], before[name]), f"{name} did not train"


def test_freeze_pattern_that_matches_nothing_is_a_one_line_config_error(workdir):
    overrides = [f"experiment.output_dir={workdir}/typo", "experiment.freeze=[trunk.blocks.*]"]
    with pytest.raises(ConfigError, match=r"^experiment.freeze: freeze pattern 'trunk.blocks.\*' matches no") as error:
        Trainer(load_config(workdir / "tiny.yaml", overrides))
    assert "\n" not in str(error.value)
