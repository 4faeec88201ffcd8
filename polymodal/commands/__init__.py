"""The engine's verbs (``polymodal train``, ``export``, ``plan``, ``synth``, ``tokenizer ...``) and the verbs that
dispatch to a family (``generate``, ``eval``).

A verb is a function ``main(argv) -> int`` named in the table of :mod:`polymodal.cli`. Its module's top level
imports only ``argparse`` and the standard library, so ``polymodal <verb> --help`` costs no torch import; the work
is imported when the verb runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` lines end with the option's default, when it has a meaningful one and does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in help or not action.option_strings:
            return help
        return f"{help} (default: %(default)s)" if help else "default: %(default)s"


def run_command(
    prog: str,
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], object],
    argv: Sequence[str],
    run: Runner | None = None,
) -> int:
    """Parse ``argv`` with the arguments ``add_arguments`` declares, then call ``run(args)`` — or the ``run`` a
    sub-verb set with ``set_defaults(run=...)``."""
    summary = description.strip().splitlines()[0] if description else None
    parser = argparse.ArgumentParser(prog=prog, description=summary, formatter_class=DefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    runner = getattr(args, "run", None) or run
    if runner is None:
        raise TypeError(f"{prog}: no runner for these arguments")
    return runner(args)


def lazy_runner(target: str) -> Runner:
    """A runner that imports ``"module:function"`` only when it is called (the verb runs, not ``--help``)."""

    def run(args: argparse.Namespace) -> int:
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(args)

    return run
