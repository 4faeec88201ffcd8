"""``polymodal configs list | show NAME | copy DEST``: the experiment configs shipped with the package.

Every ``--config`` also takes a shipped config by name (``llm/tiny`` or ``configs/llm/tiny.yaml``) when no such
file exists where you are, so the README's commands work from any directory once the package is installed.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from polymodal.commands import DefaultsHelpFormatter, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="configs", required=True)
    verbs.add_parser("list", help="the shipped configs").set_defaults(run=_list)
    show = verbs.add_parser("show", formatter_class=DefaultsHelpFormatter, help="a config, composed and resolved")
    show.add_argument("name", help="e.g. llm/tiny or configs/fourm/tiny.yaml")
    show.add_argument("overrides", nargs="*", help="key.sub=value, as for `polymodal train`")
    show.add_argument("--raw", action="store_true", help="the file as written, not composed")
    show.set_defaults(run=_show)
    copy = verbs.add_parser("copy", help="copy every shipped config into a folder, to edit them")
    copy.add_argument("destination", help="a folder that does not exist yet, e.g. ./configs")
    copy.set_defaults(run=_copy)


def main(argv: list[str]) -> int:
    return run_command("polymodal configs", __doc__, add_arguments, argv)


def _list(args: argparse.Namespace) -> int:
    from polymodal.config.loader import experiment_configs, shipped_configs

    root = shipped_configs()
    experiments = experiment_configs()
    parts = [str(p.relative_to(root).with_suffix("")) for p in sorted(root.rglob("*.yaml"))]
    print("experiments (polymodal train --config NAME):")
    print("\n".join(f"  {name}" for name in experiments))
    print("parts they compose (models, data, optimizers, alphas, generation schedules):")
    print("\n".join(f"  {name}" for name in parts if name not in experiments))
    return 0


def _show(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from polymodal.config import load_config
    from polymodal.config.loader import find_config

    path = find_config(args.name)
    print(path.read_text() if args.raw else OmegaConf.to_yaml(load_config(path, args.overrides)), end="")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from polymodal.config import ConfigError
    from polymodal.config.loader import shipped_configs

    destination = Path(args.destination)
    if destination.exists():
        raise ConfigError(f"{destination} exists already; name a new folder")
    shutil.copytree(shipped_configs(), destination)
    print(f"copied the shipped configs to {destination}: polymodal train --config {destination}/llm/tiny.yaml")
    return 0
