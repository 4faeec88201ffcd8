"""Every command the README and docs/ print stays valid: each `polymodal` command (also under `python -m`,
`torchrun` and `sbatch examples/slurm/train.sbatch`) names a real verb, its options parse with that verb's own
parser, and every `--config` loads with the overrides printed beside it; every repository path the docs name in
backticks exists. The commands that can run here at toy size are run for real elsewhere (test_readme.py,
test_shipped_configs.py, tests/families/fourm/test_fourm_pipeline.py)."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from polymodal.cli import VERBS, main
from polymodal.commands import DefaultsHelpFormatter
from polymodal.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
PATH_PREFIXES = ("polymodal/", "configs/", "docs/", "tests/", "examples/", "benchmarks/")
SBATCH_SCRIPT = "examples/slurm/train.sbatch"


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the ```bash blocks: continuations joined, comments and a trailing ``&`` dropped,
    ``NAME="..."`` variables of the block substituted into the commands after them."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        variables: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[-1:] == ["&"]:  # run in the background: the command is the same
                words = words[:-1]
            if not words:
                continue
            if len(words) == 1 and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                name, value = words[0].split("=", 1)
                variables[name] = value
                continue
            expanded = []
            for word in words:
                if word.startswith("$") and word[1:] in variables:
                    expanded += shlex.split(variables[word[1:]])
                else:
                    expanded.append(word)
            commands.append(expanded)
    return commands


def polymodal_argv(words: list[str]) -> list[str] | None:
    """The arguments after ``polymodal`` of a command that runs it, or None."""
    if words[:1] == ["polymodal"]:
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["polymodal"]:
        return words[words.index("-m") + 2 :]
    if SBATCH_SCRIPT in words:  # the script runs `polymodal train --config CONFIG OVERRIDES...`
        config, *overrides = words[words.index(SBATCH_SCRIPT) + 1 :]
        return ["train", "--config", config, *overrides]
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for document in DOCUMENTS:
        for words in shell_commands(document.read_text()):
            argv = polymodal_argv(words)
            if argv is not None:
                found.append((f"{document.relative_to(REPO)}: {shlex.join(words)}", argv))
    return found


COMMANDS = documented_commands()


class Parsed(Exception):
    """Raised instead of running the verb: carries what its parser made of the arguments."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__(namespace)
        self.namespace = namespace


def parse_only(prog, description, add_arguments, argv, run=None):
    parser = argparse.ArgumentParser(prog=prog, formatter_class=DefaultsHelpFormatter)
    add_arguments(parser)
    raise Parsed(parser.parse_args(list(argv)))


def test_the_docs_print_commands_of_every_kind():
    verbs = {argv[0] for _, argv in COMMANDS}
    assert {"train", "export", "plan", "synth", "tokenizer", "generate", "eval", "pretokenize-4m", "configs"} <= verbs


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_parses_and_its_config_loads(where, argv, monkeypatch):
    if argv[:1] in (["--help"], ["--version"]):
        assert main(argv) == 0
        return
    assert argv[0] in VERBS, f"{where}: no verb {argv[0]!r}"
    module_name = VERBS[argv[0]].target.split(":")[0]
    families = ("polymodal.families.fourm.cli", "polymodal.families.lumina.cli")  # generate/eval dispatch to these
    for name in (module_name, *families):
        monkeypatch.setattr(importlib.import_module(name), "run_command", parse_only, raising=False)
    monkeypatch.setattr("polymodal.commands.family.family_of", lambda model: "lumina" if "lumina" in model else "fourm")
    with pytest.raises(Parsed) as parsed:
        main(argv)
    args = parsed.value.namespace
    if getattr(args, "config", None):
        load_config(args.config, getattr(args, "overrides", []))
    for option in ("schedule",):
        if getattr(args, option, None):
            assert (REPO / getattr(args, option)).is_file(), f"{where}: --{option} {getattr(args, option)} is missing"


def named_paths() -> list[tuple[str, str]]:
    """Repository paths the documents name in backticks (no placeholders)."""
    found = []
    for document in DOCUMENTS:
        for token in re.findall(r"`([^`\s]+)`", document.read_text()):
            path = re.sub(r":\d+$", "", token.rstrip(".,:;)"))  # file.py:71 names a line
            if path.startswith(PATH_PREFIXES) and not re.search(r"[<>{}$]|\.\.\.|…", path):
                found.append((str(document.relative_to(REPO)), path))
    return found


def test_every_repository_path_the_docs_name_exists():
    missing = [f"{document}: {path}" for document, path in named_paths() if not list(REPO.glob(path))]
    assert not missing, "\n".join(missing)
