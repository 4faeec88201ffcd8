"""The parts every tiny trainer config in the tests shares, so a test writes out only its model and data: the
optimiser header (configs/optim/adamw_cosine.yaml and its constants) and a short, quiet experiment block. Each returns
YAML text to join with the test's own sections."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def optim_header(lr: float = 3.0e-3, warmup_steps: int = 2, **constants: object) -> str:
    """``defaults`` (the AdamW + cosine recipe) and ``constants``: ``lr``, ``warmup_steps`` and any others the test's
    sections refer to as ``${constants.NAME}``."""
    values = {"lr": lr, "warmup_steps": warmup_steps, **constants}
    lines = ["defaults:", f"  - {REPO}/configs/optim/adamw_cosine.yaml", "constants:"]
    return "\n".join(lines + [f"  {name}: {value}" for name, value in values.items()]) + "\n"


def experiment_block(
    output_dir: Path,
    *,
    total_steps: int,
    log_every: int,
    eval_every: int,
    eval_steps: int,
    ckpt_every: int,
    **settings: object,
) -> str:
    """An ``experiment`` section writing to ``output_dir``, without TensorBoard or W&B; ``settings`` adds keys (say
    ``peak_flops``)."""
    values = {
        "output_dir": output_dir,
        "total_steps": total_steps,
        "log_every": log_every,
        "eval_every": eval_every,
        "eval_steps": eval_steps,
        "ckpt_every": ckpt_every,
        **settings,
        "tensorboard": "false",
        "wandb": "{enabled: false}",
    }
    return "\n".join(["experiment:"] + [f"  {name}: {value}" for name, value in values.items()]) + "\n"


SCENE_MODALITIES = ("rgb", "caption", "label", "colour_label", "shape_label")  # captions and the probes' labels


def tiny_scene_recipe_overrides(tmp_path: Path, eval_every: int = 3) -> list[str]:
    """Overrides that run a shipped image-caption recipe (AIMv2, AIMv2-MoE, CLIP: their `constants`) for 3 steps on
    32 tiny scenes written under ``tmp_path`` (4 shards of 8, 32 px) with a WordPiece tokenizer trained on scene
    texts, one layer per tower, into ``tmp_path / "run"``, quietly."""
    from polymodal.data.synth.texts import synthetic_scene_texts
    from polymodal.data.synth.writers import write_shards
    from polymodal.tokenizers.text.bpe import save_tokenizer
    from polymodal.tokenizers.text.wordpiece import train_wordpiece

    scenes = tmp_path / "scenes"
    write_shards(scenes, num_samples=32, samples_per_shard=8, size=32, modalities=SCENE_MODALITIES)
    tokenizer = save_tokenizer(train_wordpiece(synthetic_scene_texts(50), 4400), tmp_path / "wordpiece.json")
    return [
        f"constants.scenes={scenes}", f"constants.tokenizer={tokenizer}", "constants.vocab_size=4400",
        "constants.image_size=32", "constants.vision_depth=1", "constants.text_depth=1", "constants.batch_size=8",
        "data.num_workers=0", f"+data.cache_dir={tmp_path / 'cache'}", f"experiment.output_dir={tmp_path / 'run'}",
        "experiment.total_steps=3", f"experiment.eval_every={eval_every}", "experiment.eval_steps=1",
        "experiment.ckpt_every=3", "experiment.log_every=1", "experiment.tensorboard=false",
        "experiment.wandb.enabled=false",
    ]  # fmt: skip
