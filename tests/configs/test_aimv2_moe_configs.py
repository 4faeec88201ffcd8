"""configs/aimv2_moe: the paper-sized config's encoder (AIMv2-MoE's ViT-B with 4 SwiGLU experts per block) counted
term by term on the meta device, and a few steps of the tiny recipe through the Trainer, with its data_dict keys
checked and the MoE losses logged."""

import json
from pathlib import Path

import pytest
import torch

from polymodal.config import instantiate, load_config
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.data.synth.writers import write_shards
from polymodal.models.layers.moe import MoEFeedForward
from polymodal.models.meta import checking_keys
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece
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
    scenes = tmp_path / "scenes"
    modalities = ("rgb", "caption", "label", "colour_label", "shape_label")  # the probes' labels too
    write_shards(scenes, num_samples=32, samples_per_shard=8, size=32, modalities=modalities)  # shards 0-3
    tokenizer = save_tokenizer(train_wordpiece(synthetic_scene_texts(50), 4400), tmp_path / "wordpiece.json")
    overrides = [
        f"constants.scenes={scenes}", f"constants.tokenizer={tokenizer}", "constants.vocab_size=4400",
        "constants.image_size=32", "constants.vision_depth=1", "constants.text_depth=1", "constants.batch_size=8",
        "data.num_workers=0", f"+data.cache_dir={tmp_path / 'cache'}", f"experiment.output_dir={tmp_path / 'run'}",
        "experiment.total_steps=3", "experiment.eval_every=100", "experiment.ckpt_every=3", "experiment.log_every=1",
        "experiment.tensorboard=false", "experiment.wandb.enabled=false",
    ]  # fmt: skip
    with checking_keys():  # as --debug: every block touches only the keys it declares (the trunk's moe_stats too)
        Trainer(load_config(CONFIGS / "tiny.yaml", overrides)).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert len(train) == 3
    for row in train:
        assert row["loss"] == pytest.approx(0.4 * row["pixel"] + row["caption"] + row["moe"], rel=1e-5)
        assert row["moe"] == pytest.approx(0.01 * row["moe/balance_loss"] + 0.001 * row["moe/router_z_loss"], rel=1e-4)
        assert row["moe/dropped_fraction"] == 0.0  # dropless
