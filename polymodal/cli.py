"""``polymodal <verb>``: train, export, plan, synth, tokenizer, generate, eval, and the families' own verbs.

The verbs are a table of ``name -> "module:function"``; a verb's module is imported only when that verb runs, and
verb modules import no torch at their top level, so ``polymodal --help`` and ``polymodal <verb> --help`` are quick.
Configuration mistakes, missing files and deliberate stops print one ``error:`` line and exit non-zero, without a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from polymodal import __version__
from polymodal.checkpoint.errors import CheckpointError
from polymodal.config.errors import ConfigError, did_you_mean

EXIT_CONFIG_ERROR = 2


@dataclass(frozen=True)
class Verb:
    target: str  # "module:function"; the function takes the verb's arguments and returns the exit code
    help: str


VERBS: dict[str, Verb] = {
    "train": Verb("polymodal.commands.train:main", "train the experiment a config file describes"),
    "export": Verb(
        "polymodal.commands.export:main",
        "consolidated weights + config, or a Hugging Face model dir, from a checkpoint",
    ),
    "plan": Verb("polymodal.commands.plan:main", "per-GPU memory and traffic of a config on a GPU mesh"),
    "synth": Verb("polymodal.commands.synth:main", "generate the built-in synthetic multimodal scene data set"),
    "configs": Verb("polymodal.commands.configs:main", "list, show or copy the experiment configs shipped with it"),
    "tokenizer": Verb("polymodal.commands.tokenizer:main", "train a text tokenizer; evaluate an image tokenizer"),
    "generate": Verb("polymodal.commands.family:generate", "generate with a trained model (any family that can)"),
    "eval": Verb("polymodal.commands.family:evaluate", "evaluate a trained model on held-out data vs baselines"),
    "pretokenize-4m": Verb(
        "polymodal.families.fourm.cli:pretokenize", "4M: image modalities -> tok_<modality> shards + crop settings"
    ),
    "lumina": Verb(
        "polymodal.families.lumina.cli:main", "Lumina-mGPT: conversations -> token records (pretokenize, concat)"
    ),
    "eval-4m": Verb("polymodal.families.fourm.cli:evaluate", "4M: the same as `polymodal eval` of a 4M run"),
}


def _overview() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polymodal", description=__doc__.splitlines()[0])
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for name, verb in VERBS.items():
        verbs.add_parser(name, help=verb.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"polymodal {__version__}")
        return 0
    if not argv or argv[0] not in VERBS:
        if argv and not argv[0].startswith("-"):
            print(f"error: unknown verb '{argv[0]}'{did_you_mean(argv[0], VERBS)}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        _overview().parse_args(argv)  # --help, or argparse's "a verb is required"
    module, function = VERBS[argv[0]].target.split(":")
    run = getattr(importlib.import_module(module), function)
    try:
        return run(argv[1:])
    except (ConfigError, CheckpointError, FileNotFoundError) as error:  # said in one line
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except BrokenPipeError:  # `polymodal configs list | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - interpreter shutdown flushes and closes it
        return 0


if __name__ == "__main__":
    sys.exit(main())
