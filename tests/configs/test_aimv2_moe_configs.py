"""configs/aimv2_moe: the paper-sized config's encoder (AIMv2-MoE's ViT-B with 4 SwiGLU experts per block) counted
term by term on the meta device, and a few steps of the tiny recipe through the Trainer, with its data_dict keys
checked and the MoE losses logged."""

import json
from pathlib import Path

import pytest
import torch
from trainer_configs import tiny_scene_recipe_overrides

from polymodal.config import instantiate, load_config
from polymodal.models.layers.moe import MoEFeedForward
from polymodal.models.meta import checking_keys
from polymodal.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "aimv2_moe"


def test_base_builds_on_meta_with_the_moe_encoder_count():
    cfg = load_config(CONFIGS / "base.yaml")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    encoder, decoder = model.models["image_encoder"], model.models["text_decoder"]
    dim, depth, hidden, experts, patch_pixels, num_patches = 768, 12, 2048, 4, 14 * 14 * 3, 256
    patch_embed = patch_pixels * dim + dim + dim  # projection with its bias, RMSNorm
    block = 4 * dim * dim + dim * experts + experts * 3 * dim * hidden + 2 * dim  # attention, router, experts, norms
    expected = patch_embed + num_patches * dim + depth * block + dim
    assert sum(p.numel() for p in encoder.parameters()) == expected == 255_509_760
    layers = [block.mlp for block in encoder.trunk.transformer.blocks]
    assert all(isinstance(mlp, MoEFeedForward) and (mlp.num_experts, mlp.top_k) == (4, 1) for mlp in layers)
    assert layers[0].capacity_factor is None and layers[0].experts.kind == "swiglu"
    assert not decoder.trunk.transformer.has_moe
    assert instantiate(cfg.loss).weights == {"pixel": 0.4, "caption": 1.0, "moe": 1.0}
    assert (cfg.constants.batch_size, cfg.experiment.grad_accum_steps, cfg.constants.lr) == (128, 4, 2.0e-3)


@pytest.mark.usefixtures("single_thread")
def test_tiny_recipe_trains_with_moe_losses(tmp_path):
    overrides = tiny_scene_recipe_overrides(tmp_path, eval_every=100)
    with checking_keys():  # as --debug: every block touches only the keys it declares (the trunk's moe_stats too)
        Trainer(load_config(CONFIGS / "tiny.yaml", overrides)).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert len(train) == 3
    for row in train:
        assert row["loss"] == pytest.approx(0.4 * row["pixel"] + row["caption"] + row["moe"], rel=1e-5)
        assert row["moe"] == pytest.approx(0.01 * row["moe/balance_loss"] + 0.001 * row["moe/router_z_loss"], rel=1e-4)
        assert row["moe/dropped_fraction"] == 0.0  # dropless
