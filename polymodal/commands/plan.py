"""``polymodal plan --config FILE``: per-GPU memory and traffic of a config on a GPU mesh (exit 1: won't fit)."""

from __future__ import annotations

import argparse

from polymodal.commands import run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML file")
    parser.add_argument("--gpus", type=int, default=None, help="world size (default: the configured mesh, else 8)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    parser.add_argument(
        "--mask",
        choices=("document", "causal"),
        default="document",
        help="a transformer LM's rows: packed documents (a dense mask, the default bound) or one document each",
    )
    parser.add_argument(
        "--dropless-capacity",
        choices=("worst", "balanced"),
        default="worst",
        help="plan dropless MoE layers with every token on one expert (the bound) or a balanced load",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. experiment.distributed.ep=2")


def main(argv: list[str]) -> int:
    return run_command("polymodal plan", __doc__, add_arguments, argv, run)


def run(args: argparse.Namespace) -> int:
    from polymodal.train.parallel.planner import plan_main

    return plan_main(args.config, args.overrides, args.gpus, args.gpu_memory, args.mask, args.dropless_capacity)
