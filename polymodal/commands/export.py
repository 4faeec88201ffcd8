"""``polymodal export --checkpoint DIR --out DIR``: consolidated safetensors weights + config from a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from polymodal.commands import run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (takes its newest)")
    parser.add_argument("--out", required=True, help="output directory")


def main(argv: list[str]) -> int:
    return run_command("polymodal export", __doc__, add_arguments, argv, run)


def run(args: argparse.Namespace) -> int:
    from polymodal.checkpoint.weights import export_weights, load_trained_model

    model, config_yaml = load_trained_model(args.checkpoint)
    weights = export_weights(model, Path(args.out), config_yaml)
    print(f"exported {args.checkpoint} -> {weights}")
    return 0
