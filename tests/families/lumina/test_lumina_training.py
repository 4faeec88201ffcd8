"""``polymodal train`` of the family's model launched like every recipe: under torchrun with two processes it trains
like one process with the whole global batch. Real processes on gloo/CPU; the records are the session's real ones
(the tiny exported run's).

Rows label different numbers of tokens, so this holds only because the step's loss is a mean over every labelled
token of every rank (the trainer weighs ranks by their labelled tokens, ``NextTokenLoss.loss_weight``); upstream's
mean of per-rank means would differ from the one-process loss. Tensor parallel (through the per-head QK-norm)
gives both ranks the same rows.
"""

import json
from pathlib import Path

import pytest
import torch
from lumina_corpus import CODEBOOK, TEXT_VOCAB
from parallel_runs import assert_losses_match, losses, torchrun

from polymodal.checkpoint.weights import load_trained_model
from polymodal.commands.export import main as export_command
from polymodal.config import load_config
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[3]
STEPS = 6


def write_config(directory: Path, data_config: Path, vocab_size: int) -> Path:
    config = directory / "lumina.yaml"
    config.write_text(
        f"""
defaults:
  - {REPO}/configs/lumina/model.yaml
  - {REPO}/configs/optim/adamw_cosine.yaml
constants:
  vocab_size: {vocab_size}
  dim: 32
  depth: 2
  num_heads: 4
  num_kv_heads: 2
  ffn_dim: 64
  max_seq_len: 512
  lr: 3.0e-3
  warmup_steps: 2
data:
  _target_: polymodal.families.lumina.data.LuminaData
  data_config: {data_config}
  seq_len: 256
  batch_size: 4
  vocab_size: {vocab_size}
  val_fraction: 0.1
  eval_batch_size: 4   # every rank evaluates the same batches: those of the single process
model:
  loss_chunk_size: 128
experiment:
  output_dir: {directory}/single
  total_steps: {STEPS}
  log_every: 1
  eval_every: 100
  eval_steps: 1
  ckpt_every: 100
  precision: fp32
  peak_flops: 1.0e11
  tensorboard: false
"""
    )
    return config


# name: (per-rank batch, overrides); the global batch is 4 rows in each
LAYOUTS = {
    "fsdp-2": (2, []),
    "ddp-2": (2, ["experiment.distributed.strategy=ddp"]),
    "tp-2": (4, ["experiment.distributed.tp=2"]),
}


@pytest.fixture(scope="module")
def lumina_training(lumina_run, tmp_path_factory):
    """The config, and the losses of one process with the whole batch of 4 rows."""
    directory = tmp_path_factory.mktemp("lumina_training")
    config = write_config(directory, lumina_run["data_config"], TEXT_VOCAB + CODEBOOK)
    Trainer(load_config(config)).fit()
    return directory, config, losses(directory / "single")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_processes_train_like_one(lumina_training, layout):
    directory, config, reference = lumina_training
    batch, overrides = LAYOUTS[layout]
    out = directory / layout
    torchrun(2, config, f"experiment.output_dir={out}", f"data.batch_size={batch}", *overrides)
    assert_losses_match(losses(out), reference, range(1, STEPS + 1))
    validation = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (directory / "single" / "metrics.jsonl").read_text().splitlines()]
    val_loss = [[r["loss"] for r in records if r["split"] == "val"] for records in (validation, single)]
    assert val_loss[0] == pytest.approx(val_loss[1], rel=1e-4) and val_loss[0]


def test_training_continues_from_its_hugging_face_export(lumina_training, tmp_path):
    """`polymodal export --format hf` of the trained run, then `experiment.init_from` that directory: the model
    starts from exactly the run's weights (through Chameleon's names and back) and trains on."""
    directory, config, _ = lumina_training
    hf = tmp_path / "hf"
    assert export_command(["--checkpoint", str(directory / "single"), "--out", str(hf), "--format", "hf"]) == 0
    trained, _ = load_trained_model(directory / "single")
    overrides = [f"experiment.init_from.path={hf}", "experiment.init_from.strict=true"]
    trainer = Trainer(load_config(config, [*overrides, f"experiment.output_dir={tmp_path / 'continued'}"]))
    started = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    for name, tensor in trained.state_dict().items():
        assert torch.equal(started[name], tensor), name
    loss = trainer.train_step()["loss"]
    assert torch.isfinite(loss)
    assert any(not torch.equal(started[name], tensor) for name, tensor in trainer.model.state_dict().items())
