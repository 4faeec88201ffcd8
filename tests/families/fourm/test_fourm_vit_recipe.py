"""configs/fourm/vit_classify_tiny.yaml: fine-tunes from a saved 4M export (its encoder and rgb embedding land in the
classifier's ViT) and, with init_from removed, trains from scratch, on an ImageFolder of synthetic scenes."""

import math
from pathlib import Path

import pytest
import torch

from polymodal.checkpoint.weights import export_weights
from polymodal.config import load_config
from polymodal.data.synth.writers import write_imagefolder
from polymodal.families.fourm.model import build_fourm
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[3]
RECIPE = REPO / "configs/fourm/vit_classify_tiny.yaml"
SMALL = dict(dim=32, encoder_depth=2, num_heads=4)


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one intra-op thread on the shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes_imagefolder")
    write_imagefolder(root, num_samples=40, val_fraction=0.25, seed=3, size=32)
    return root


def fourm_export(out: Path) -> dict[str, torch.Tensor]:
    """A tiny trained-4M stand-in (rgb@32 in, tok_rgb@32 out) exported as `polymodal export` does."""
    torch.manual_seed(7)
    overrides = {"rgb@32": {"patch_size": 8}, "tok_rgb@32": {"vocab_size": 16, "patch_size": 8}}
    modalities = {"names": list(overrides), "overrides": overrides}
    model = build_fourm("tiny", modalities, decoder_depth=1, **SMALL)
    export_weights(model, out, config_yaml="model: {}\n")
    return model.state_dict()


def recipe(tmp_path: Path, scenes: Path, name: str, *overrides: str):
    return load_config(
        RECIPE,
        [
            f"constants.data_root={scenes}",
            f"constants.fourm_export={tmp_path / 'export'}",
            "constants.image_size=32",
            "constants.batch_size=4",
            "constants.warmup_steps=1",
            *(f"constants.{key}={value}" for key, value in SMALL.items()),
            f"experiment.output_dir={tmp_path / name}",
            "experiment.total_steps=3",
            "experiment.log_every=1",
            "experiment.eval_every=3",
            "experiment.eval_steps=1",
            "experiment.ckpt_every=3",
            "experiment.resume=none",
            "experiment.tensorboard=false",
            "experiment.wandb.enabled=false",
            *overrides,
        ],
    )


def train_losses(trainer: Trainer, steps: int) -> list[float]:
    return [float(trainer.train_step()["loss"]) for _ in range(steps)]


def test_recipe_initialises_the_vit_from_a_fourm_export_and_trains(tmp_path, scenes):
    fourm_state = fourm_export(tmp_path / "export")
    trainer = Trainer(recipe(tmp_path, scenes, "finetune"))
    vit_state = trainer.model.vit.state_dict()
    loaded = [key for key in vit_state if key.startswith(("encoder.", "encoder_embeddings.rgb@32."))]
    assert len(loaded) == len(vit_state) > 10
    for key in loaded:
        torch.testing.assert_close(vit_state[key], fourm_state[key], rtol=0, atol=0)
    losses = train_losses(trainer, 3)
    assert all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(trainer.model.vit.encoder.blocks[0].attn.q_proj.weight, fourm_state[
        "encoder.blocks.0.attn.q_proj.weight"])  # fmt: skip


def test_recipe_trains_from_scratch_without_init_from(tmp_path, scenes):
    fourm_state = fourm_export(tmp_path / "export")
    trainer = Trainer(recipe(tmp_path, scenes, "scratch", "experiment.init_from.path=null"))
    weight = trainer.model.vit.encoder.blocks[0].attn.q_proj.weight
    assert not torch.equal(weight, fourm_state["encoder.blocks.0.attn.q_proj.weight"])
    trainer.fit()
    assert all(math.isfinite(loss) for loss in train_losses(trainer, 1))
    assert (tmp_path / "scratch" / "checkpoints").is_dir()
