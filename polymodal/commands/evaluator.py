"""``polymodal eval --model RUN --evaluator NAME [key=value ...]``: one evaluator of the engine (a linear or attentive
probe, CLIP zero-shot, retrieval) on a trained run, without training; any model, of any family.

The evaluator is the entry ``NAME`` of the ``evaluators:`` section of the run's own config, or of ``--config FILE``
(for a run trained without it). ``key=value`` overrides are relative to that entry (``sweep.epochs=10``,
``val.max_samples=200``; ``+key=value`` adds a key). Results print as ``NAME/<metric> <value>`` lines, and as one
JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a run dir (newest checkpoint), checkpoint or export")
    parser.add_argument("--evaluator", required=True, help="the evaluator's name in the evaluators section")
    parser.add_argument("--config", help="a config file whose evaluators section to use instead of the run's")
    parser.add_argument("--device", default="cpu", help="device the model runs on, e.g. cpu or cuda:0")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("overrides", nargs="*", help="key=value settings of the evaluator (relative to its entry)")


def run(args: argparse.Namespace) -> int:
    """Build the chosen evaluator, run it on the trained model, print its results."""
    from omegaconf import OmegaConf

    from polymodal.config import apply_overrides
    from polymodal.runs import load_run
    from polymodal.train.evaluators import EvalContext, build_evaluators, run_evaluators

    trained = load_run(args.model, args.device)
    config = _read_config(args.config) if args.config else trained.config
    tree = {"evaluators": OmegaConf.to_container(config.get("evaluators") or {}, resolve=True)}
    apply_overrides(tree, [_under(f"evaluators.{args.evaluator}", override) for override in args.overrides])
    evaluators = build_evaluators(tree["evaluators"], only=args.evaluator)
    results = run_evaluators(evaluators, EvalContext(trained.model, trained.device))
    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name} {value:.6g}")
    return 0


def _read_config(path: str) -> DictConfig:
    """A YAML file (a whole experiment config or just an ``evaluators:`` section), interpolations kept."""
    from pathlib import Path

    import yaml
    from omegaconf import OmegaConf

    from polymodal.config import ConfigError

    try:
        tree = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(tree, dict) or not isinstance(tree.get("evaluators"), dict):
        raise ConfigError(f"{path} has no evaluators: section (a mapping of names to evaluators)")
    return OmegaConf.create(tree)


def _under(prefix: str, override: str) -> str:
    """``override`` with its key moved under ``prefix`` (keeping a leading ``+`` or ``~``)."""
    sign = override[:1] if override[:1] in "+~" else ""
    return f"{sign}{prefix}.{override[len(sign) :]}"
