"""configs/clip: the tiny recipe trains a few steps on toy scenes (also with NegCLIP's hard negatives) and its
zero-shot and retrieval evaluators run on the model's own keys; the paper-sized ViT-B/16 builds on the meta device
with CLIP ViT-B/16's parameter count."""

import json
from pathlib import Path

import pytest
import torch
from trainer_configs import tiny_scene_recipe_overrides

from polymodal.config import instantiate, load_config
from polymodal.models.clip import CLIP
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
VIT_B16_PARAMETERS = 149_620_737  # open_clip ViT-B-16 / HF openai/clip-vit-base-patch16 (86,192,640 image tower)


def test_vit_b16_has_clip_vit_b16_parameter_count_on_meta():
    cfg = load_config(REPO / "configs" / "clip" / "vit-b16.yaml")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert isinstance(model, CLIP)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model) == VIT_B16_PARAMETERS
    assert count(model.models["image_tower"]) == 86_192_640


HARD_NEGATIVES = [
    "+data.batch_transform._target_=polymodal.data.multimodal.hard_negatives.SwappedWordNegatives",
    "+data.batch_transform.tokenizer=${constants.tokenizer}",
    "+data.batch_transform.groups=[[sphere,cube,cylinder,cone]]",
    "+loss.hard_negative_key=hard_negative_valid",
]


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("hard_negatives", [False, True], ids=["clip", "negclip"])
def test_tiny_recipe_trains_and_evaluates_zero_shot_retrieval_and_probes(tmp_path, hard_negatives):
    overrides = tiny_scene_recipe_overrides(tmp_path) + (HARD_NEGATIVES if hard_negatives else [])
    trainer = Trainer(load_config(REPO / "configs" / "clip" / "tiny.yaml", overrides))
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert len(train) == 3 and all(torch.isfinite(torch.tensor(row["loss"])) for row in train)
    assert all(("hard_negative_accuracy" in row) == hard_negatives for row in train)
    (evaluated,) = [row for row in rows if row["split"] == "eval"]
    for name in ("zero_shot_count", "zero_shot_colour", "zero_shot_shape"):
        assert 0.0 <= evaluated[f"{name}/top1"] <= 1.0
    assert 0.0 <= evaluated["retrieval/image_to_text_R@1"] <= evaluated["retrieval/image_to_text_R@5"] <= 1.0
    for name in ("colour_probe", "shape_probe", "count_probe"):  # linear probes of the image embedding
        assert 0.0 <= evaluated[f"{name}/accuracy"] <= 1.0 and 0.0 <= evaluated[f"{name}/baseline_accuracy"] <= 1.0
