"""``polymodal export --checkpoint DIR --out DIR``: consolidated safetensors weights + config from a checkpoint,
with the tokenizers the run carries (``tokenizers/``), so the export is usable on its own."""

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
    from polymodal.tokenizers.carried import TOKENIZERS_DIR, carried_tokenizer_paths, copy_tokenizers

    model, config_yaml = load_trained_model(args.checkpoint)
    weights = export_weights(model, Path(args.out), config_yaml)
    tokenizers = copy_tokenizers(carried_tokenizer_paths(args.checkpoint), Path(args.out) / TOKENIZERS_DIR)
    print(f"exported {args.checkpoint} -> {weights}" + (f" with tokenizers {sorted(tokenizers)}" if tokenizers else ""))
    return 0
