"""The trainer on multimodal shards: a scene classifier composed in YAML, corrupt samples counted in the metrics,
and the multimodal loader's position restored by checkpoints."""

import json
import tarfile
from pathlib import Path

import torch
import torch.nn.functional as F
from trainer_configs import experiment_block, optim_header

from polymodal.config import load_config
from polymodal.data.synth.writers import write_shards
from polymodal.objectives.classification import ClassificationLoss
from polymodal.train.trainer import Trainer

MODEL_AND_DATA = """
model:
  _target_: polymodal.models.meta.ModuleBlock
  read_keys: rgb
  write_keys: logits
  module:
    _target_: torch.nn.Sequential
    _args_:
      - {{_target_: torch.nn.Conv2d, in_channels: 3, out_channels: 8, kernel_size: 3, stride: 2}}
      - {{_target_: torch.nn.ReLU}}
      - {{_target_: torch.nn.AdaptiveAvgPool2d, output_size: 1}}
      - {{_target_: torch.nn.Flatten}}
      - {{_target_: torch.nn.Linear, in_features: 8, out_features: 5}}
loss:
  _target_: polymodal.objectives.classification.ClassificationLoss
data:
  _target_: polymodal.data.multimodal.data_module.MultimodalData
  train: {root}/[rgb,label]/shard-{{00000..00002}}.tar
  val: {root}/[rgb,label]/shard-{{00000..00002}}.tar
  modalities: [rgb, label]
  image_size: 32
  batch_size: 4
  cache_dir: {root}/cache
"""


def corrupt_member(tar_path, member_name: str) -> None:
    with tarfile.open(tar_path) as tar:
        member = tar.getmember(member_name)
        offset, size = member.offset_data, member.size
    with open(tar_path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * size)


def write_config(tmp_path, root, name: str) -> Path:
    config = tmp_path / f"{name}.yaml"
    experiment = experiment_block(
        tmp_path / name, total_steps=6, log_every=1, eval_every=3, eval_steps=2, ckpt_every=3, peak_flops=1.0e11
    )
    config.write_text(optim_header() + MODEL_AND_DATA.format(root=root) + experiment)
    return config


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_classifier_trains_counts_corrupt_samples_and_resumes_exactly(tmp_path):
    root = tmp_path / "scenes"
    write_shards(root, num_samples=30, samples_per_shard=10, seed=5, modalities=("rgb", "label"))
    corrupt_member(root / "rgb" / "shard-00001.tar", "00000012.rgb.png")

    full = Trainer(load_config(write_config(tmp_path, root, "full")))
    full.fit()
    train = [r for r in records(tmp_path / "full") if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert train[-1]["skipped_samples"] == 1  # the corrupt image was read, counted once and replaced
    assert {"loss", "accuracy", "samples_per_s"} <= set(train[-1])
    assert "tokens_per_s" not in train[-1]  # images are not tokens
    assert train[-1]["mfu"] > 0  # no train_flops: counted on a fake-tensor twin (train/flop_count.py)

    config = write_config(tmp_path, root, "resumed")
    first = Trainer(load_config(config, ["experiment.total_steps=6"]))
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    resumed = Trainer(load_config(config))
    resumed.resume()
    assert resumed.progress.step == 3
    for _ in range(3):
        resumed.train_step()
    assert resumed.data.skip_counts() == full.data.skip_counts() == {"corrupt_image": 1}
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)


def test_classification_loss_matches_cross_entropy():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    loss, metrics = ClassificationLoss(label_smoothing=0.1)({"logits": logits, "label": labels})
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert metrics["accuracy"].item() == (logits.argmax(-1) == labels).float().mean().item()


def test_classifier_trains_on_mixup_cutmix_soft_targets_and_evaluates_on_labels(tmp_path):
    root = tmp_path / "scenes"
    write_shards(root, num_samples=30, samples_per_shard=10, seed=5, modalities=("rgb", "label"))
    config = write_config(tmp_path, root, "mixup")
    trainer = Trainer(load_config(config, ["+data.mixup={num_classes: 5, label_smoothing: 0.1}"]))
    batch = next(trainer.data.train)
    assert batch["label"].shape == (4, 5) and batch["label"].dtype == torch.float32
    trainer.fit()
    logged = records(tmp_path / "mixup")
    train = [r for r in logged if r["split"] == "train"]
    assert len(train) == 6 and all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in train)
    assert any(r["split"] == "val" for r in logged)
