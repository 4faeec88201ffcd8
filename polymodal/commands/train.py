"""``polymodal train --config FILE [overrides]``: train the experiment a config file describes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from polymodal.commands import run_command

EXIT_TRAINING_STOPPED = 3
EXIT_PREEMPTED = 4  # a checkpoint of the current step was saved: requeue the job to resume
DEBUG_SETTINGS = {
    "experiment.debug": True,
    "experiment.log_every": 1,
    "experiment.eval_every": 10,
    "experiment.eval_steps": 2,
    "experiment.ckpt_every": 10,
    "experiment.resume": "none",
    "experiment.wandb.enabled": False,
}
DEBUG_MAX_STEPS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML file")
    parser.add_argument("--debug", action="store_true", help="quick verbose run: 20 steps, key checks, no wandb")
    parser.add_argument(
        "overrides", nargs="*", help="key.sub=value to set, +key.sub=value to add a key, ~key.sub to delete one"
    )


def main(argv: list[str]) -> int:
    return run_command("polymodal train", __doc__, add_arguments, argv, run)


def apply_debug_settings(cfg: Any) -> None:
    """A quick, verbose, local run: few steps, every log line, no remote logging, its own output dir."""
    from omegaconf import OmegaConf

    for key, value in DEBUG_SETTINGS.items():
        OmegaConf.update(cfg, key, value)
    cfg.experiment.total_steps = min(cfg.experiment.total_steps, DEBUG_MAX_STEPS)
    cfg.experiment.output_dir = f"{cfg.experiment.output_dir}-debug"


def fit(cfg: Any) -> tuple[dict[str, Any], bool]:
    """Train; returns the result and whether this is the main rank. The trainer is released on return: its model's
    data-parallel state holds the process groups, which must not outlive ``teardown_distributed``."""
    from polymodal.train.trainer import Trainer

    trainer = Trainer(cfg)
    return trainer.fit(), trainer.env.is_main


def run(args: argparse.Namespace) -> int:
    from polymodal.config import load_config

    cfg = load_config(args.config, args.overrides)  # before torch is imported: a config mistake fails at once
    if args.debug:
        apply_debug_settings(cfg)
    from polymodal.distributed.env import teardown_distributed
    from polymodal.train.trainer import TrainingPreempted, TrainingStopped

    try:
        result, is_main = fit(cfg)
    except TrainingPreempted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    except TrainingStopped as stop:
        print(f"error: {stop}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    finally:
        teardown_distributed()
    if is_main:
        val = result["val"].get("loss")
        print(f"finished at step {result['step']}" + (f", validation loss {val:.4f}" if val is not None else ""))
    return 0
