"""The trainer runs 4M from configs/fourm/tiny.yaml on a tiny pre-tokenized synthetic world: the loss falls, every
target modality's loss is logged, evaluation runs, FLOPs and samples are counted on the nested batch, and a resumed
run repeats the uninterrupted one exactly."""

import json
import math
from pathlib import Path

import pytest
import torch

from polymodal.config import load_config
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.data.synth.writers import write_shards
from polymodal.families.fourm.pretokenize import CropOptions, pretokenize_4m
from polymodal.tokenizers.image.quantizers import VectorQuantizer
from polymodal.tokenizers.image.tokenizer import build_image_tokenizer
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece
from polymodal.train.batches import batch_size
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "fourm" / "tiny.yaml"
CODEBOOKS = {"rgb": 1000, "depth": 256, "normal": 256, "semseg": 128}  # configs/fourm/data/synth_tiny.yaml vocabs
TARGETS = ["tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption", "det"]
BATCH = 4
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models (tests/conftest.py)


def random_image_tokenizer(modality: str, codebook_size: int):
    """An untrained tiny tokenizer (64 px -> 8x8 codes): pre-tokenization only needs valid codes."""
    torch.manual_seed(codebook_size + len(modality))
    return build_image_tokenizer(
        modality,
        VectorQuantizer(dim=8, codebook_size=codebook_size),
        downsample=8,
        channels=[8, 8, 8, 8],
        num_classes=5 if modality == "semseg" else None,
    ).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """synth (16 scenes, 4 shards: 3 train, 1 val) -> tiny image tokenizers -> pretokenize-4m -> WordPiece."""
    base = tmp_path_factory.mktemp("fourm_world")
    scenes = base / "scenes"
    modalities = (*CODEBOOKS, "caption", "det")
    write_shards(scenes, num_samples=16, samples_per_shard=4, seed=3, size=64, modalities=modalities)
    tokenizers = {name: random_image_tokenizer(name, size) for name, size in CODEBOOKS.items()}
    pretokenize_4m(scenes, tokenizers, options=CropOptions(n_crops=2, image_size=64, seed=1), cache_dir=base)
    text = train_wordpiece(synthetic_scene_texts(40), vocab_size=4800)
    return {
        "scenes": scenes,
        "text_tokenizer": save_tokenizer(text, base / "wordpiece.json"),
        "text_vocab_size": text.get_vocab_size(),
        "cache": base / "cache",
    }


def overrides(world: dict, output_dir: Path, *extra: str) -> list[str]:
    """configs/fourm/tiny.yaml pointed at the tiny world, at a test size (32 wide, 1+1 layers, 4 x 32+32 tokens)."""
    return [
        f"constants.scenes={world['scenes']}",
        f"constants.text_tokenizer={world['text_tokenizer']}",
        f"constants.text_vocab_size={world['text_vocab_size']}",
        f"constants.alphas={REPO}/configs/fourm/alphas/mix_rgb2all_all2all_a0.5.yaml",
        f"constants.batch_size={BATCH}",
        "constants.num_workers=0",
        "constants.input_tokens=32",
        "constants.target_tokens=32",
        "constants.dim=32",
        "constants.depth=1",
        "constants.num_heads=2",
        "constants.lr=3.0e-3",
        "constants.warmup_steps=3",
        f"data.cache_dir={world['cache']}",
        f"experiment.output_dir={output_dir}",
        "experiment.log_every=1",
        "experiment.peak_flops=1.0e11",
        "experiment.tensorboard=false",
        "experiment.wandb.enabled=false",
        *extra,
    ]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if r["split"] == "train"}


@pytest.mark.slow
def test_tiny_recipe_trains_logs_every_modality_and_evaluates(world, tmp_path):
    run = tmp_path / "run"
    steps = ["experiment.total_steps=30", "experiment.eval_every=15", "experiment.eval_steps=1"]
    trainer = Trainer(load_config(CONFIG, overrides(world, run, *steps, "experiment.ckpt_every=30")))
    result = trainer.fit()
    losses = list(train_losses(run).values())
    assert len(losses) == 30 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # from ~ln(V) towards the data's statistics
    last = [r for r in records(run) if r["split"] == "train"][-1]
    for name in TARGETS:
        assert math.isfinite(last[f"{name}/loss"]) and f"{name}/tokens" in last
    assert last["mfu"] > 0 and last["samples_per_s"] > 0
    val = [r for r in records(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [15, 30]
    assert all(math.isfinite(r["loss"]) and "caption/loss" in r for r in val)
    assert result["val"]["loss"] == pytest.approx(val[-1]["loss"])


def test_a_step_counts_samples_and_flops_of_the_nested_batch(world, tmp_path):
    trainer = Trainer(load_config(CONFIG, overrides(world, tmp_path / "run", "experiment.total_steps=4")))
    stats = trainer.train_step()
    assert stats["samples"] == BATCH
    batch = next(trainer.data.train)
    output = trainer.model(dict(batch))
    assert stats["flops"] > 0 and trainer.model.train_flops(output) > 0
    assert batch_size({"tok_rgb@64": batch["tok_rgb@64"]}) == BATCH  # no sample_id: read inside the modality


def test_resume_repeats_the_uninterrupted_losses(world, tmp_path):
    steps = [
        "experiment.total_steps=6",
        "experiment.ckpt_every=3",
        "experiment.eval_every=6",
        "experiment.eval_steps=1",
    ]
    full = Trainer(load_config(CONFIG, overrides(world, tmp_path / "full", *steps)))
    full.fit()

    first = Trainer(load_config(CONFIG, overrides(world, tmp_path / "resumed", *steps)))
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    resumed = Trainer(load_config(CONFIG, overrides(world, tmp_path / "resumed", *steps)))
    resumed.resume()
    assert resumed.progress.step == 3
    later = [resumed.train_step()["loss"].item() for _ in range(3)]
    assert later == [train_losses(tmp_path / "full")[step] for step in (4, 5, 6)]
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_batch_without_tensors_is_a_clear_error():
    with pytest.raises(ValueError, match="no tensor"):
        batch_size({"caption": {}, "name": "x"})
