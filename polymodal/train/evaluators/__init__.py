"""Evaluators: measurements of the model being trained (or of a trained run) on data of their own.

The top-level ``evaluators:`` section of a config maps names to evaluators (``_target_`` nodes). The trainer runs
every one at the ``experiment.eval_every`` cadence, on every rank (an FSDP forward needs all ranks), and logs their
results as ``<name>/<metric>`` (split ``eval``) to metrics.jsonl, TensorBoard and wandb. A failing evaluator stops
the run with an error naming it. ``polymodal eval --model RUN --evaluator NAME`` runs one on a trained run::

    evaluators:
      linear_probe:
        _target_: polymodal.train.evaluators.LinearProbe
        train: {location: data/scenes_if, split: train, image_size: 32}
        val: {location: data/scenes_if, split: val, image_size: 32}
        feature_key: features            # the data_dict key the model writes
        pool: mean                       # [B, T, D] tokens -> [B, D]
        sweep: {learning_rates: [1.0e-3, 1.0e-2, 1.0e-1], weight_decays: [0.0, 1.0e-4], epochs: 50}
        # the model's other inputs, made by a data batch transform: here AIM's encoder without its causal part
        # batch_transform: {_target_: polymodal.data.multimodal.prefix.FixedPrefixLengths, length: 64}

An evaluator is any object with ``evaluate(context: EvalContext) -> dict[str, float]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from polymodal.config import ConfigError, instantiate
from polymodal.config.arguments import check_target_arguments
from polymodal.train.evaluators.clip import Retrieval, ZeroShotClassification
from polymodal.train.evaluators.context import SAMPLES, EvalContext, Evaluator, EvaluatorFailed, run_evaluators
from polymodal.train.evaluators.data import ImageSplit, TextEncoder
from polymodal.train.evaluators.probes import AttentiveProbe, LinearProbe, ProbeTraining
from polymodal.train.evaluators.sides import ImageSide, TextSide

__all__ = [
    "SAMPLES",
    "AttentiveProbe",
    "EvalContext",
    "Evaluator",
    "EvaluatorFailed",
    "ImageSide",
    "ImageSplit",
    "LinearProbe",
    "ProbeTraining",
    "Retrieval",
    "TextEncoder",
    "TextSide",
    "ZeroShotClassification",
    "build_evaluators",
    "run_evaluators",
]


def build_evaluators(section: Mapping[str, Any] | None, only: str | None = None) -> dict[str, Evaluator]:
    """The evaluators of a config's ``evaluators:`` section (``only``: just that one), keys checked first."""
    section = section or {}
    if only is not None:
        if only not in section:
            raise ConfigError(f"no evaluator '{only}' in the config's evaluators section (it has {sorted(section)})")
        section = {only: section[only]}
    evaluators = {}
    for name, node in section.items():
        path = f"evaluators.{name}"
        check_target_arguments(node, path)
        try:
            evaluator = instantiate(node)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error
        if not callable(getattr(evaluator, "evaluate", None)):
            raise ConfigError(f"{path}: {type(evaluator).__name__} has no evaluate(context) method")
        evaluators[str(name)] = evaluator
    return evaluators
