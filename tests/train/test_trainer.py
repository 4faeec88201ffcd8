"""The training loop end to end on a tiny LLM: resume equality, crash-safe saves, non-finite policy, accumulation."""

import json
import math
import shutil

import pytest
import torch
from malicious_pickles import plant_malicious_metadata

from polymodal.checkpoint import dcp as checkpoint_module
from polymodal.checkpoint.integrity import write_checksums
from polymodal.config import load_config
from polymodal.models.meta import Objective
from polymodal.train.trainer import Trainer, TrainingStopped, move_to_device


def make_trainer(config, *overrides: str) -> Trainer:
    return Trainer(load_config(config, list(overrides)))


def train_losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    assert len(losses) == sum(r["split"] == "train" for r in records), "a step was logged twice"
    return losses


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


class Interrupt(Exception):
    pass


def interrupt_at(monkeypatch, step: int) -> None:
    """Make the loop die (like a killed job) right after optimizer step ``step``."""
    original = Trainer.train_step

    def train_step(self):
        stats = original(self)
        if self.progress.step == step:
            raise Interrupt
        return stats

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_resume_gives_identical_losses_and_bit_identical_weights(tiny_config, tmp_path, monkeypatch):
    full = make_trainer(tiny_config, f"experiment.output_dir={tmp_path}/full")
    full.fit()

    with monkeypatch.context() as patch:
        interrupt_at(patch, 6)  # checkpoint at 4, steps 5-6 lost with the crash and re-run after resume
        with pytest.raises(Interrupt):
            make_trainer(tiny_config, f"experiment.output_dir={tmp_path}/resumed").fit()
    resumed = make_trainer(tiny_config, f"experiment.output_dir={tmp_path}/resumed")
    resumed.fit()

    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "full")
    full_weights, resumed_weights = weights(full), weights(resumed)
    for name, value in full_weights.items():
        assert torch.equal(value, resumed_weights[name]), name
    assert resumed.data.train.state_dict() == full.data.train.state_dict()


def test_run_writes_config_metrics_and_loss_curve(tiny_config):
    trainer = make_trainer(tiny_config, "experiment.tensorboard=true")
    result = trainer.fit()
    run = trainer.output_dir
    assert (run / "config.yaml").read_text().count("${") == 0  # fully resolved
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == list(range(1, 9)) and [r["step"] for r in val] == [4, 8]
    for key in (
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "data_wait_fraction",
        "peak_memory_gb",
        "mfu",
        "cross_entropy",
        "accuracy",
    ):
        assert key in train[-1], key
    assert 0 < train[-1]["mfu"] < 1 and 0 <= train[-1]["data_wait_fraction"] < 1
    assert train[-1]["loss"] < train[0]["loss"]
    assert result["val"]["loss"] == pytest.approx(val[-1]["loss"])
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tensorboard").iterdir())
    assert [p.name for p in trainer.checkpointer.complete_checkpoints()] == ["step_00000004", "step_00000008"]


def test_keep_last_prunes_old_checkpoints(tiny_config):
    trainer = make_trainer(tiny_config, "experiment.ckpt_every=2", "experiment.keep_last=2")
    trainer.fit()
    assert [p.name for p in trainer.checkpointer.complete_checkpoints()] == ["step_00000006", "step_00000008"]


def test_crash_during_save_leaves_previous_checkpoint_resumable(tiny_config, tmp_path, monkeypatch):
    saves = {"count": 0}
    original = checkpoint_module._write_json

    def failing_write(path, payload):
        if path.name == checkpoint_module.TRAINER_STATE:
            saves["count"] += 1
            if saves["count"] == 2:
                raise OSError("disk full (injected)")
        original(path, payload)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "_write_json", failing_write)
        with pytest.raises(OSError, match="injected"):
            make_trainer(tiny_config).fit()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if not p.name.startswith(".")] == ["step_00000004"]
    assert list(checkpoints.glob(".tmp-step_00000008"))  # the half-written one is never mistaken for complete

    trainer = make_trainer(tiny_config)
    trainer.fit()
    assert trainer.progress.step == 8
    assert not list(checkpoints.glob(".tmp-*"))
    assert set(train_losses(tmp_path / "run")) == set(range(1, 9))


def poison_loss_at(monkeypatch, steps: set[int]) -> None:
    original = Trainer.forward_loss

    def forward_loss(self, batch):
        loss, metrics, output = original(self, batch)
        if self.model.training and self.progress.step + 1 in steps:
            loss = loss * float("nan")
        return loss, metrics, output

    monkeypatch.setattr(Trainer, "forward_loss", forward_loss)


def test_non_finite_step_is_skipped_and_counted(tiny_config, monkeypatch):
    poison_loss_at(monkeypatch, {3})
    trainer = make_trainer(tiny_config, "experiment.total_steps=3", "experiment.ckpt_every=2")
    trainer.resume()
    trainer.train_step()
    trainer.train_step()
    before = weights(trainer)
    trainer.train_step()  # step 3 is poisoned
    assert trainer.progress.skipped_steps == 1
    for name, value in weights(trainer).items():
        assert torch.equal(value, before[name]), f"{name} changed during a skipped step"
    assert all(p.grad is None for p in trainer.model.parameters())


def test_too_many_non_finite_steps_stop_with_checkpoint(tiny_config, monkeypatch):
    poison_loss_at(monkeypatch, {2, 3, 4})
    trainer = make_trainer(tiny_config, "experiment.nonfinite.max_skips=2")
    with pytest.raises(TrainingStopped, match="more than 2 steps skipped") as stopped:
        trainer.fit()
    assert "step_00000004" in str(stopped.value)
    assert trainer.checkpointer.latest().name == "step_00000004"


def test_stop_policy_stops_at_first_non_finite_step(tiny_config, monkeypatch):
    poison_loss_at(monkeypatch, {2})
    trainer = make_trainer(tiny_config, "experiment.nonfinite.policy=stop")
    with pytest.raises(TrainingStopped, match="policy is 'stop'"):
        trainer.fit()
    assert trainer.checkpointer.latest().name == "step_00000002"


def test_gradient_accumulation_matches_the_larger_batch(tiny_config):
    """2 micro-batches of 2 sequences = 1 batch of 4: the loader's global order makes them the same sequences."""
    small = make_trainer(
        tiny_config,
        "constants.batch_size=2",
        "experiment.grad_accum_steps=2",
        "experiment.output_dir=" + str(tiny_config.parent / "accum"),
    )
    large = make_trainer(
        tiny_config, "constants.batch_size=4", "experiment.output_dir=" + str(tiny_config.parent / "large")
    )
    for _ in range(3):
        small_stats, large_stats = small.train_step(), large.train_step()
        torch.testing.assert_close(small_stats["loss"], large_stats["loss"], rtol=1e-5, atol=1e-6)
    for name, value in weights(large).items():
        torch.testing.assert_close(weights(small)[name], value, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_and_activation_checkpointing_train(tiny_config):
    plain = make_trainer(
        tiny_config, "experiment.total_steps=2", "experiment.output_dir=" + str(tiny_config.parent / "p")
    )
    checkpointed = make_trainer(
        tiny_config,
        "experiment.total_steps=2",
        "experiment.activation_checkpointing=true",
        "experiment.output_dir=" + str(tiny_config.parent / "ac"),
    )
    for _ in range(2):
        torch.testing.assert_close(checkpointed.train_step()["loss"], plain.train_step()["loss"])
    bf16 = make_trainer(
        tiny_config, "experiment.precision=bf16", "experiment.output_dir=" + str(tiny_config.parent / "b")
    )
    result = bf16.fit()
    assert math.isfinite(result["val"]["loss"]) and result["step"] == 8


def test_resume_from_explicit_path_and_missing_path(tiny_config, tmp_path):
    make_trainer(tiny_config).fit()
    source = tmp_path / "run" / "checkpoints" / "step_00000004"
    other = tmp_path / "elsewhere"
    shutil.copytree(source, other / "step_00000004")
    trainer = make_trainer(
        tiny_config, f"experiment.resume={other}/step_00000004", f"experiment.output_dir={tmp_path}/second"
    )
    trainer.resume()
    assert trainer.progress.step == 4
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        make_trainer(tiny_config, f"experiment.resume={tmp_path}/nope").resume()


def test_resuming_an_earlier_step_starts_a_branch_that_later_resumes_follow(tiny_config, tmp_path):
    """Resume step 4 of a run that reached step 8 (keep_last=1 after): the new step 6 is not pruned in favour of the
    old step 8, and a later resume=auto continues the branch."""
    make_trainer(tiny_config, "experiment.ckpt_every=2", "experiment.keep_last=4").fit()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in sorted(checkpoints.glob("step_*"))][-1] == "step_00000008"
    branch = make_trainer(
        tiny_config,
        f"experiment.resume={checkpoints}/step_00000004",
        "experiment.total_steps=6",
        "experiment.ckpt_every=2",
        "experiment.keep_last=1",
    )
    branch.fit()
    assert [p.name for p in checkpoints.glob("step_*")] == ["step_00000006"]
    (aside,) = checkpoints.glob("abandoned-after-step_00000004-*")
    assert sorted(p.name for p in aside.iterdir()) == ["step_00000006", "step_00000008"]  # the old run's, kept
    follow = make_trainer(tiny_config, "experiment.total_steps=8")
    follow.resume()
    assert follow.progress.step == 6


class TopTokenAgreement(Objective):
    """An evaluation metric block: how often the arg-max of the logits equals the input token (a copy rate)."""

    def __init__(self):
        super().__init__(read_keys=["logits", "input_ids"])

    def forward(self, data):
        agreement = (data["logits"].argmax(-1) == data["input_ids"]).float().mean()
        return agreement, {"copy_rate": agreement}


def test_metrics_blocks_run_at_evaluation_and_are_logged(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_TRUSTED_TARGETS", __name__)  # a metrics block of the user's own code
    trainer = make_trainer(
        tiny_config,
        f"metrics={{_target_: {__name__}.TopTokenAgreement}}",
        "model.loss_chunk_size=null",  # the metric reads logits: the head writes them instead of the loss sums
        "experiment.total_steps=4",
    )
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert val and all(0.0 <= r["copy_rate"] <= 1.0 for r in val)
    assert all("copy_rate" not in r for r in records if r["split"] == "train")


def test_move_to_device_reaches_nested_modality_dicts():
    batch = {"ids": torch.zeros(2, dtype=torch.int64), "tok_rgb": {"tensor": torch.ones(2, 3)}, "name": "x"}
    moved = move_to_device(batch, torch.device("meta"))
    assert moved["ids"].device.type == "meta" and moved["tok_rgb"]["tensor"].device.type == "meta"
    assert moved["name"] == "x"


def test_a_run_without_a_finite_loss_to_plot_still_succeeds(tiny_config, tmp_path, monkeypatch, caplog):
    original = Trainer.forward_loss

    def forward_loss(self, batch):  # every loss, training and validation, is NaN
        loss, metrics, output = original(self, batch)
        return loss * float("nan"), metrics, output

    monkeypatch.setattr(Trainer, "forward_loss", forward_loss)
    trainer = make_trainer(tiny_config, "experiment.nonfinite.max_skips=100")
    with caplog.at_level("WARNING", logger="polymodal"):
        result = trainer.fit()
    assert result["step"] == 8 and trainer.checkpointer.latest().name == "step_00000008"
    assert "no loss plot" in caplog.text and not (tmp_path / "run" / "loss.png").exists()


def test_resume_never_unpickles_a_planted_metadata_file(tiny_config, tmp_path):
    make_trainer(tiny_config, "experiment.total_steps=4").fit()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000004"
    plant_malicious_metadata(checkpoint, tmp_path / "pwned")
    write_checksums(checkpoint)  # the attacker rewrites the checksums too
    resumed = make_trainer(tiny_config)
    resumed.resume()
    assert resumed.progress.step == 4 and not (tmp_path / "pwned").exists()


def test_resume_skips_a_damaged_newest_checkpoint(tiny_config, tmp_path, caplog):
    make_trainer(tiny_config).fit()
    shard = next((tmp_path / "run" / "checkpoints" / "step_00000008").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1])
    resumed = make_trainer(tiny_config)
    with caplog.at_level("WARNING", logger="polymodal"):
        resumed.resume()
    assert resumed.progress.step == 4 and "step_00000008 is damaged" in caplog.text
