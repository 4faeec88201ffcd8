"""``polymodal generate --model RUN ...`` and ``polymodal eval --model RUN ...``: one verb for every family.

``polymodal eval --model RUN --evaluator NAME`` is not the family's: it runs one of the engine's evaluators
(:mod:`polymodal.commands.evaluator`) on any trained model.

The family is the one the run's model belongs to: its ``_target_`` in the run's ``config.yaml`` names a module
under ``polymodal.families.<family>`` (configs written before the families layout are mapped by
:mod:`polymodal.config.aliases`). The verb runs ``polymodal.families.<family>.cli.<verb>`` with the same
arguments; ``polymodal generate --model RUN --help`` shows that family's options.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from polymodal.commands import evaluator, run_command


def generate(argv: list[str]) -> int:
    """Generate with a trained model of any family that can (4M: chained any-to-any)."""
    return _dispatch("generate", "generate", generate.__doc__, argv)


def evaluate(argv: list[str]) -> int:
    """Evaluate a trained model of any family that can, on held-out data beside baselines; with --evaluator NAME,
    run one of the engine's evaluators (probes, zero-shot, retrieval) on a model of any kind."""
    if any(arg == "--evaluator" or arg.startswith("--evaluator=") for arg in argv):
        return run_command("polymodal eval", evaluator.__doc__, evaluator.add_arguments, argv, evaluator.run)
    return _dispatch("eval", "evaluate", evaluate.__doc__, argv)


def family_of(model: str | Path) -> str:
    """The family of the model saved at ``model`` (a run, checkpoint or export directory)."""
    import yaml

    from polymodal.config import ConfigError
    from polymodal.config.aliases import current_target
    from polymodal.runs import FAMILIES_PACKAGE, family_of_target

    config_file = _config_file(Path(model))
    try:
        config = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_file} is not valid YAML: {' '.join(str(error).split())}") from error
    target = config.get("model", {}).get("_target_") if isinstance(config, dict) else None
    if not isinstance(target, str):
        raise ConfigError(f"{config_file} has no model._target_: not the config of a trained model")
    family = family_of_target(target)
    if family is None:
        raise ConfigError(f"the model of {model} ({current_target(target)}) belongs to no family in {FAMILIES_PACKAGE}")
    return family


def _config_file(path: Path) -> Path:
    """``config.yaml`` of an export or checkpoint directory, or of a run directory."""
    from polymodal.config import ConfigError

    if (path / "config.yaml").is_file():
        return path / "config.yaml"
    checkpoints = sorted((path / "checkpoints").glob("step_*/config.yaml"))
    if checkpoints:
        return checkpoints[-1]
    raise ConfigError(f"--model {path}: no config.yaml there (expected a run, checkpoint or export directory)")


def _dispatch(verb: str, function: str, description: str | None, argv: list[str]) -> int:
    from polymodal.config import ConfigError

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model")
    known, _ = model.parse_known_args(argv)
    if known.model is None:
        parser = argparse.ArgumentParser(
            prog=f"polymodal {verb}",
            description=f"{description} The options after --model are the family's: "
            f"see `polymodal {verb} --model RUN --help`.",
        )
        parser.add_argument("--model", required=True, help="a trained model: run dir, checkpoint or export")
        parser.parse_args(argv)  # prints the help, or the error that --model is missing
    family = family_of(known.model)
    try:
        verbs = importlib.import_module(f"polymodal.families.{family}.cli")
    except ModuleNotFoundError as error:
        raise ConfigError(f"the model of {known.model} is of the {family!r} family, which has no verbs") from error
    run = getattr(verbs, function, None)
    if run is None:
        raise ConfigError(f"`polymodal {verb}` does not serve the {family!r} family (its model cannot {verb})")
    return run(argv)
