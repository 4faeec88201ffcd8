"""A tiny AIM composed in YAML and trained by the trainer: random prefix lengths for training, a fixed prefix for a
finite validation loss, and a resumed run that redraws the same prefixes (bit-identical weights)."""

import json
from pathlib import Path

import pytest
import torch
from trainer_configs import experiment_block, optim_header

from polymodal.config import load_config
from polymodal.data.synth.writers import write_shards
from polymodal.train.trainer import Trainer

MODEL_AND_DATA = """
model:
  _target_: polymodal.models.meta.MetaModel
  preprocessor:
    - _target_: polymodal.models.vit.ViTPreprocessor
      image_size: ${{constants.image_size}}
      patch_size: ${{constants.patch_size}}
      dim: ${{constants.dim}}
      cls_token: true
      patch_norm: layernorm
      read_key: rgb
    - _target_: polymodal.models.parts.PrefixCausalMask
  trunk:
    _target_: polymodal.models.parts.TransformerTrunk
    read_key: tokens
    write_key: tokens
    position_key: null
    transformer:
      _target_: polymodal.models.layers.block.build_transformer
      dim: ${{constants.dim}}
      depth: 2
      num_heads: 4
      mlp: gelu
      norm: layernorm
      rope: null
  head:
    _target_: polymodal.models.mlp_head.MLPHead
    dim: ${{constants.dim}}
    out_dim: 48
    depth: 1
    grid_size: [4, 4]
loss:
  _target_: polymodal.objectives.pixel.NextPatchPixelLoss
  patch_size: ${{constants.patch_size}}
  image_key: rgb
data:
  _target_: polymodal.data.multimodal.data_module.MultimodalData
  train: {root}/[rgb]/shard-{{00000..00001}}.tar
  val: {root}/[rgb]/shard-{{00000..00001}}.tar
  modalities: [rgb]
  image_size: ${{constants.image_size}}
  batch_size: 4
  cache_dir: {root}/cache
  batch_transform: {{_target_: polymodal.data.multimodal.prefix.RandomPrefixLengths, num_patches: 16}}
  eval_batch_transform: {{_target_: polymodal.data.multimodal.prefix.FixedPrefixLengths, length: 1}}
"""


def write_config(tmp_path: Path, root: Path, name: str) -> Path:
    config = tmp_path / f"{name}.yaml"
    header = optim_header(lr=2.0e-3, image_size=16, patch_size=4, num_patches=16, dim=32)
    experiment = experiment_block(tmp_path / name, total_steps=6, log_every=1, eval_every=3, eval_steps=2, ckpt_every=3)
    config.write_text(header + MODEL_AND_DATA.format(root=root) + experiment)
    return config


@pytest.mark.usefixtures("single_thread")
def test_aim_trains_validates_and_resumes_exactly(tmp_path):
    root = tmp_path / "scenes"
    write_shards(root, num_samples=20, samples_per_shard=10, seed=5, size=16, modalities=("rgb",))
    full = Trainer(load_config(write_config(tmp_path, root, "full")))
    full.fit()
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    train = [row["loss"] for row in rows if row["split"] == "train"]
    val = [row for row in rows if row["split"] == "val"]
    assert len(train) == 6 and all(torch.isfinite(torch.tensor(train)))
    assert len(val) == 2 and all(torch.isfinite(torch.tensor(row["loss"])) for row in val)
    assert val[0]["counted_fraction"] == 1.0  # prefix 1: every next-patch target is scored

    config = write_config(tmp_path, root, "resumed")
    first = Trainer(load_config(config))
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    resumed = Trainer(load_config(config))
    resumed.resume()
    for _ in range(3):
        resumed.train_step()
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
