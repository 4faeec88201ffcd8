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
