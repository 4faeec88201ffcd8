"""``polymodal eval --model RUN --evaluator NAME [key=value ...]``: one evaluator of the engine (a linear or attentive
probe, CLIP zero-shot, retrieval) on a trained run, without training; any model, of any family.

The evaluator is the entry ``NAME`` of the ``evaluators:`` section of the run's own config, or of ``--config FILE``
(for a run trained without it); ``--evaluator all`` runs every one. ``key=value`` overrides are relative to the named
entry (``sweep.epochs=10``, ``val.max_samples=200``; ``+key=value`` adds a key). Results print as
``NAME/<metric> <value>`` lines, and as one JSON object with ``--json``.

``--init random`` evaluates the weights the run started from instead (rebuilt from its config and seed): the
untrained baseline of the same evaluator. ``--table`` prints a Markdown table of every score beside the same score
of the initial weights and its trivial baseline (the evaluators report the majority class's accuracy or chance as
``baseline_<metric>``), and how far the trained score is above the better of the two in standard errors of the
difference (from the number of held-out items each evaluator reports as ``samples``): 2 or more is beyond sampling
noise at about 95 %.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


ALL = "all"
BASELINE_PREFIX = "baseline_"  # an evaluator's trivial baseline of metric m is reported as baseline_m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a run dir (newest checkpoint), checkpoint or export")
    parser.add_argument(
        "--evaluator", required=True, help=f"the evaluator's name in the evaluators section, or {ALL!r} for every one"
    )
    parser.add_argument("--config", help="a config file whose evaluators section to use instead of the run's")
    parser.add_argument(
        "--init",
        choices=("trained", "random"),
        default="trained",
        help="random: the weights the run started from (same seed), the untrained baseline of the same evaluator",
    )
    parser.add_argument("--device", default="cpu", help="device the model runs on, e.g. cpu or cuda:0")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument(
        "--table",
        action="store_true",
        help="print a Markdown table: each score of the trained weights beside the initial weights' and the "
        "trivial baseline's (majority class or chance)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value settings of the evaluator (relative to its entry)")


def run(args: argparse.Namespace) -> int:
    """Build the chosen evaluators, run them on the trained model (and its initial weights), print the results."""
    from polymodal.config import ConfigError

    if args.evaluator == ALL and args.overrides:
        raise ConfigError(f"overrides are relative to one evaluator's entry: name it instead of {ALL!r}")
    if args.table and args.init == "random":
        raise ConfigError("--table evaluates both the trained and the initial weights: leave out --init random")
    results = _evaluate(args, initial=args.init == "random")
    if args.table:
        print(baseline_table(results, _evaluate(args, initial=True)))
    elif args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name} {value:.6g}")
    return 0


def _evaluate(args: argparse.Namespace, initial: bool) -> dict[str, float]:
    from omegaconf import OmegaConf

    from polymodal.config import ConfigError, apply_overrides
    from polymodal.runs import load_run
    from polymodal.train.evaluators import EvalContext, build_evaluators, run_evaluators

    run = load_run(args.model, args.device, initial=initial)
    config = _read_config(args.config) if args.config else run.config
    section = config.get("evaluators")
    tree = {"evaluators": OmegaConf.to_container(section, resolve=True) if section else {}}
    apply_overrides(tree, [_under(f"evaluators.{args.evaluator}", override) for override in args.overrides])
    evaluators = build_evaluators(tree["evaluators"], only=None if args.evaluator == ALL else args.evaluator)
    if not evaluators:
        raise ConfigError(f"{args.config or args.model} has no evaluators: section to run (see --config)")
    return run_evaluators(evaluators, EvalContext(run.model, run.device))


def baseline_table(trained: Mapping[str, float], initial: Mapping[str, float]) -> str:
    """A Markdown table of every score that has a trivial baseline (``<name>/baseline_<metric>``: the majority
    class or chance): the trained weights' score, the initial weights' and the baseline, and the trained score's
    margin over the better of the two in standard errors (when the evaluator reports its ``samples``)."""
    from polymodal.train.evaluators import SAMPLES

    rows = [
        "| evaluator/metric | trained | random init | majority / chance | margin (standard errors) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, value in trained.items():
        name, _, metric = key.rpartition("/")
        baseline = trained.get(f"{name}/{BASELINE_PREFIX}{metric}")
        if baseline is None or metric.startswith(BASELINE_PREFIX):
            continue
        samples = trained.get(f"{name}/{SAMPLES}")
        reference = max(initial[key], baseline)
        margin = "—" if samples is None else f"{margin_in_standard_errors(value, reference, samples):+.1f}"
        rows.append(f"| {key} | {value:.3f} | {initial[key]:.3f} | {baseline:.3f} | {margin} |")
    return "\n".join(rows)


def margin_in_standard_errors(score: float, reference: float, samples: float) -> float:
    """How far ``score`` is above ``reference``, both fractions of the same ``samples`` held-out items, in standard
    errors of their difference (normal approximation, the two taken as independent: for two scores of the same
    items, which agree more often than independent ones, this overstates the error)."""
    if samples <= 0:
        raise ValueError(f"a margin needs at least one held-out item, got samples={samples}")
    variance = (score * (1 - score) + reference * (1 - reference)) / samples
    if variance == 0:  # both scores 0 or 1: no sampling spread to measure against
        return 0.0 if score == reference else math.copysign(math.inf, score - reference)
    return (score - reference) / math.sqrt(variance)


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
