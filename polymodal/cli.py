"""``polymodal <verb>``: train, export, plan, synth, pretokenize-4m, tokenizer training, generate, eval-4m.

Configuration mistakes and deliberate stops print one ``error:`` line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from polymodal.config import ConfigError, load_config
from polymodal.data.synth.cli import add_synth_arguments, synth_main
from polymodal.families.fourm.generate.run import add_generate_arguments, generate_main
from polymodal.families.fourm.evaluate.tasks import add_eval_4m_arguments, eval_4m_main
from polymodal.families.fourm.pretokenize import add_pretokenize_arguments
from polymodal.tokenizers.image.evaluate import add_tokenizer_eval_arguments, tokenizer_eval_main

EXIT_CONFIG_ERROR = 2
EXIT_TRAINING_STOPPED = 3

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


def apply_debug_settings(cfg: DictConfig) -> None:
    """A quick, verbose, local run: few steps, every log line, no remote logging, its own output dir."""
    for key, value in DEBUG_SETTINGS.items():
        OmegaConf.update(cfg, key, value)
    cfg.experiment.total_steps = min(cfg.experiment.total_steps, DEBUG_MAX_STEPS)
    cfg.experiment.output_dir = f"{cfg.experiment.output_dir}-debug"


def _train(args: argparse.Namespace) -> int:
    from polymodal.distributed.env import teardown_distributed
    from polymodal.train.trainer import Trainer, TrainingStopped

    cfg = load_config(args.config, args.overrides)
    if args.debug:
        apply_debug_settings(cfg)
    try:
        trainer = Trainer(cfg)
        result = trainer.fit()
    except TrainingStopped as stop:
        print(f"error: {stop}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    finally:
        teardown_distributed()
    if trainer.env.is_main:
        val = result["val"].get("loss")
        print(f"finished at step {result['step']}" + (f", validation loss {val:.4f}" if val is not None else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    from polymodal.checkpoint.weights import export_weights, load_trained_model

    model, config_yaml = load_trained_model(args.checkpoint)
    weights = export_weights(model, Path(args.out), config_yaml)
    print(f"exported {args.checkpoint} -> {weights}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from polymodal.train.parallel.planner import plan_main

    return plan_main(args.config, args.overrides, args.gpus, args.gpu_memory)


def _pretokenize_4m(args: argparse.Namespace) -> int:
    from polymodal.families.fourm.pretokenize import pretokenize_main

    return pretokenize_main(args)


def _train_text_tokenizer(args: argparse.Namespace) -> int:
    if args.kind == "wordpiece":
        from polymodal.tokenizers.text.wordpiece import train_wordpiece_text_tokenizer as train
    else:
        from polymodal.tokenizers.text.bpe import train_text_tokenizer as train
    train(args.inputs or None, Path(args.output), args.vocab_size, args.min_frequency)
    return 0


def _add_command(
    commands: argparse._SubParsersAction,
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], object],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """A subcommand whose arguments come from its module's ``add_*_arguments`` and that runs ``run(args)``."""
    command = commands.add_parser(name, help=help)
    add_arguments(command)
    command.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polymodal", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train the experiment a config file describes")
    train.add_argument("--config", required=True, help="experiment YAML file")
    train.add_argument("--debug", action="store_true", help="quick verbose run: 20 steps, key checks, no wandb")
    train.add_argument(
        "overrides", nargs="*", help="key.sub=value to set, +key.sub=value to add a key, ~key.sub to delete one"
    )
    train.set_defaults(run=_train)

    export = verbs.add_parser("export", help="consolidated safetensors weights + config from a checkpoint")
    export.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (takes its newest)")
    export.add_argument("--out", required=True, help="output directory")
    export.set_defaults(run=_export)

    plan = verbs.add_parser("plan", help="per-GPU memory and traffic of a config on a GPU mesh (exit 1: won't fit)")
    plan.add_argument("--config", required=True, help="experiment YAML file")
    plan.add_argument("--gpus", type=int, default=None, help="world size (default: the configured mesh, else 8)")
    plan.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    plan.add_argument("overrides", nargs="*", help="key.sub=value, e.g. experiment.distributed.tp=2")
    plan.set_defaults(run=_plan)

    _add_command(
        verbs, "synth", "generate the built-in synthetic multimodal scene data set", add_synth_arguments, synth_main
    )

    _add_command(
        verbs,
        "pretokenize-4m",
        "encode a 4M shard tree's image modalities into tok_<modality> shards + crop settings",
        add_pretokenize_arguments,
        _pretokenize_4m,
    )

    tokenizer = verbs.add_parser("tokenizer", help="train tokenizers").add_subparsers(dest="tokenizer", required=True)
    text = tokenizer.add_parser(
        "train-text",
        help="byte-level BPE (LLM/AR; default corpus: stdlib docstrings) or 4M's WordPiece "
        "(default corpus: synthetic captions, det strings and docstrings)",
    )
    text.add_argument("inputs", nargs="*", help=".txt/.jsonl files, directories or globs")
    text.add_argument("--kind", choices=("bpe", "wordpiece"), default="bpe")
    text.add_argument("--output", required=True, help="tokenizer.json to write")
    text.add_argument("--vocab-size", type=int, default=8192)
    text.add_argument("--min-frequency", type=int, default=2)
    text.set_defaults(run=_train_text_tokenizer)
    _add_command(
        tokenizer,
        "eval",
        "an image tokenizer vs down-then-up sampling on held-out scenes; writes reconstructions.png",
        add_tokenizer_eval_arguments,
        tokenizer_eval_main,
    )

    _add_command(
        verbs,
        "generate",
        "chained any-to-any 4M generation -> generations.png + .json",
        add_generate_arguments,
        generate_main,
    )
    _add_command(
        verbs,
        "eval-4m",
        "a 4M on held-out scenes vs trivial baselines (depth, semseg, caption, caption->rgb)",
        add_eval_4m_arguments,
        eval_4m_main,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
