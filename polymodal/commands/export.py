"""``polymodal export --checkpoint DIR --out DIR``: consolidated safetensors weights + config from a checkpoint,
with the tokenizers the run carries (``tokenizers/``), so the export is usable on its own.

``--format hf`` writes a Hugging Face model directory instead (``config.json``, ``model.safetensors`` in HF's
names, and the run's text tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``) that ``transformers`` loads:
the LLM as ``LlamaForCausalLM`` (``Qwen3ForCausalLM`` with QK-norm), a family's model as the family registers
(Lumina's as ``ChameleonForConditionalGeneration``); see docs/hf_export.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from polymodal.commands import run_command

if TYPE_CHECKING:
    from torch import nn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (takes its newest)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--format", choices=("polymodal", "hf"), default="polymodal", help="our layout, or a Hugging Face model dir"
    )


def main(argv: list[str]) -> int:
    return run_command("polymodal export", __doc__, add_arguments, argv, run)


def run(args: argparse.Namespace) -> int:
    from polymodal.checkpoint.weights import export_weights, load_trained_model
    from polymodal.tokenizers.carried import TOKENIZERS_DIR, carried_tokenizer_paths, copy_tokenizers

    model, config_yaml = load_trained_model(args.checkpoint)
    if args.format == "hf":
        return export_hf_directory(model, config_yaml, args)
    weights = export_weights(model, Path(args.out), config_yaml)
    tokenizers = copy_tokenizers(carried_tokenizer_paths(args.checkpoint), Path(args.out) / TOKENIZERS_DIR)
    print(f"exported {args.checkpoint} -> {weights}" + (f" with tokenizers {sorted(tokenizers)}" if tokenizers else ""))
    return 0


def export_hf_directory(model: nn.Module, config_yaml: str, args: argparse.Namespace) -> int:
    """Write ``model`` (built from ``config_yaml``'s ``model`` section) as a Hugging Face model directory through
    the exporter registered for its builder (``models/hf_directory.py``)."""
    from omegaconf import OmegaConf

    from polymodal.config import ConfigError
    from polymodal.config.aliases import current_target
    from polymodal.models.hf_directory import export_hf, write_hf_directory
    from polymodal.tokenizers.carried import TEXT, carried_tokenizer_paths

    arguments = OmegaConf.to_container(OmegaConf.create(config_yaml).model, resolve=True)
    builder = current_target(arguments.pop("_target_"))
    tokenizer = carried_tokenizer_paths(args.checkpoint).get(TEXT)
    try:
        config, state = export_hf(builder, arguments, model.state_dict(), tokenizer)
    except ValueError as error:
        raise ConfigError(f"--format hf: {error}") from error
    out = write_hf_directory(args.out, config, state, tokenizer)
    with_tokenizer = f" with tokenizer {tokenizer.name}" if tokenizer else " (the run carries no text tokenizer)"
    print(f"exported {args.checkpoint} -> {out} as {config['architectures'][0]}{with_tokenizer}")
    return 0
