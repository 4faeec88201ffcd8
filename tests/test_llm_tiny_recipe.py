"""The shipped tiny LLM recipe, end to end, as `make demo` runs it."""

import pytest

from polymodal.config import load_config
from polymodal.train.logging import read_metrics
from polymodal.train.trainer import Trainer

REPO_CONFIG = "configs/llm/tiny.yaml"


@pytest.mark.slow
def test_tiny_llm_learns_far_below_the_unigram_entropy(tmp_path):
    overrides = [f"experiment.output_dir={tmp_path}/run", f"constants.cache_dir={tmp_path}/cache"]
    cfg = load_config(REPO_CONFIG, [*overrides, "experiment.wandb.enabled=false"])
    trainer = Trainer(cfg)
    result = trainer.fit()
    unigram_entropy = trainer.data.info()["unigram_entropy_nats"]
    val_losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    assert val_losses == sorted(val_losses, reverse=True), "validation loss should fall at every evaluation"
    assert result["val"]["loss"] < unigram_entropy - 1.5, (result["val"]["loss"], unigram_entropy)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000


@pytest.mark.slow
def test_torch_compile_switch_trains(tmp_path, tiny_config):
    trainer = Trainer(load_config(tiny_config, ["experiment.torch_compile=true", "experiment.total_steps=2"]))
    eager = Trainer(load_config(tiny_config, ["experiment.total_steps=2", f"experiment.output_dir={tmp_path}/eager"]))
    blocks = trainer.model.trunk.transformer.blocks
    assert trainer.train_model is trainer.model and all(block._compiled_call_impl is not None for block in blocks)
    for _ in range(2):
        compiled_loss, eager_loss = trainer.train_step()["loss"], eager.train_step()["loss"]
        assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-4)
