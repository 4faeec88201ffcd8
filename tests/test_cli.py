"""The command line as a user meets it: real subprocesses, exit codes, messages without tracebacks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polymodal.cli import main
from polymodal.config import load_config
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "polymodal", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("experiment.totl_steps=5", "did you mean 'experiment.total_steps'"),
        ("experiment.log_every=often", "experiment.log_every"),
        ("experiment.precision=fp16", "fp16"),
    ],
)
def test_config_mistakes_exit_2_with_one_clear_line(tiny_config, override, expected):
    result = run_cli("train", "--config", str(tiny_config), override)
    assert result.returncode == 2
    assert expected in result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_missing_config_file_is_named(tmp_path):
    result = run_cli("train", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_misspelt_key_in_the_file_is_reported(tiny_config):
    tiny_config.write_text(tiny_config.read_text().replace("  log_every: 1", "  log_evry: 1"))
    result = run_cli("train", "--config", str(tiny_config))
    assert result.returncode == 2 and "did you mean 'experiment.log_every'" in result.stderr


def test_debug_run_is_short_local_and_checks_keys(tiny_config, tmp_path, capsys, monkeypatch):
    seen = {}
    original = Trainer.__init__

    def spy(self, cfg):
        original(self, cfg)
        seen["exp"] = self.exp

    monkeypatch.setattr(Trainer, "__init__", spy)
    assert main(["train", "--config", str(tiny_config), "--debug", "experiment.total_steps=50"]) == 0
    exp = seen["exp"]
    assert exp.debug and exp.total_steps == 20 and exp.log_every == 1 and not exp.wandb.enabled
    assert exp.output_dir == f"{tmp_path}/run-debug"
    assert (tmp_path / "run-debug" / "metrics.jsonl").is_file()


@pytest.mark.parametrize("flags", [["--debug", "constants.warmup_steps=50"], ["experiment.total_steps=1"]])
def test_a_run_shorter_than_its_warmup_trains_with_a_note(tiny_config, tmp_path, flags, capsys):
    """`--debug` (20 steps) with a 50-step warmup, and a 1-step try of a config with a 2-step warmup: both used to
    stop with a traceback after the data and the model were built."""
    assert main(["train", "--config", str(tiny_config), *flags]) == 0
    assert "finished at step" in capsys.readouterr().out


def test_a_resume_into_another_model_is_refused_in_one_line_and_keeps_the_run(tiny_config, tmp_path):
    """README's first two training lines: a run, then the same output_dir with a wider model."""
    assert main(["train", "--config", str(tiny_config)]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    result = run_cli("train", "--config", str(tiny_config), "constants.dim=48")
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: cannot resume from"), result.stderr
    assert "32) there" in error[0] and "48) now" in error[0] and "experiment.resume=none" in error[0]
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # still the run that is on disk
    assert main(["train", "--config", str(tiny_config), "constants.dim=48", "experiment.resume=none"]) == 0


def test_export_of_a_missing_run_and_a_resume_with_another_global_batch_are_one_line(tiny_config, tmp_path):
    missing = run_cli("export", "--checkpoint", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "export"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no-such-run" in missing.stderr
    assert main(["train", "--config", str(tiny_config)]) == 0
    other_batch = run_cli("train", "--config", str(tiny_config), "constants.batch_size=2", "experiment.total_steps=12")
    assert other_batch.returncode == 2, other_batch.stderr
    assert other_batch.stderr.count("\n") == 1 and "the saved global batch is 4" in other_batch.stderr


def test_a_gpu_sized_model_on_this_cpu_is_one_line_before_anything_is_built(tiny_config):
    """configs/llm/7b.yaml-sized weights on a 24 GiB machine: refused from the meta-device parameter count."""
    result = run_cli("train", "--config", str(tiny_config), "constants.dim=8192", "constants.depth=48")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "B parameters: training it needs at least" in result.stderr


def test_export_then_fine_tune_from_the_export_with_filters(tiny_config, tmp_path):
    assert main(["train", "--config", str(tiny_config)]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    trained = Trainer(load_config(tiny_config, [f"experiment.output_dir={tmp_path}/run"]))
    trained.resume()
    for name, value in exported.items():
        assert torch.equal(value, trained.model.state_dict()[name]), name
    assert "_target_: polymodal.models.llm.build_llm" in (tmp_path / "export" / "config.yaml").read_text()
    carried = (tmp_path / "export" / "tokenizers" / "text.json").read_bytes()  # the export carries its tokenizer
    assert carried == (tmp_path / "run" / "tokenizers" / "text.json").read_bytes()
    assert carried == Path(trained.data.tokenizer_paths()["text"]).read_bytes()

    fine_tune = Trainer(
        load_config(
            tiny_config,
            [
                f"experiment.output_dir={tmp_path}/fine-tune",
                f"experiment.init_from.path={tmp_path}/export",
                "experiment.init_from.exclude=[head.*, preprocessor.*]",
            ],
        )
    )
    own = fine_tune.model.state_dict()
    for name, value in exported.items():
        loaded = torch.equal(own[name], value)
        assert loaded == name.startswith("trunk."), name


def test_rename_rules_map_checkpoint_keys(tiny_config, tmp_path):
    from polymodal.checkpoint.weights import select_and_rename

    state = {"trunk.transformer.blocks.0.attn.q_proj.weight": torch.ones(1), "head.proj.weight": torch.zeros(1)}
    renamed = select_and_rename(state, include=["trunk.*"], rename={r"^trunk\.transformer\.": "encoder."})
    assert list(renamed) == ["encoder.blocks.0.attn.q_proj.weight"]
    with pytest.raises(ValueError, match="two checkpoint keys"):
        select_and_rename(state, rename={r".*": "same"})


def test_tokenizer_train_text_command(tmp_path, text_corpus):
    output = tmp_path / "tok" / "tokenizer.json"
    result = run_cli("tokenizer", "train-text", str(text_corpus), "--output", str(output), "--vocab-size", "700")
    assert result.returncode == 0, result.stderr
    from polymodal.tokenizers.text.bpe import load_tokenizer

    tokenizer = load_tokenizer(output)
    text = "the red cube is left of the blue sphere."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_plan_reports_fit_and_exit_code():
    fits = run_cli("plan", "--config", "configs/llm/125m.yaml", "--gpus", "8", "--gpu-memory", "80")
    assert fits.returncode == 0, fits.stderr
    assert "memory per GPU" in fits.stdout and "FSDP reduce-scatter grads" in fits.stdout
    too_small = run_cli("plan", "--config", "configs/llm/7b.yaml", "--gpus", "2", "--gpu-memory", "16")
    assert too_small.returncode == 1 and "does NOT fit" in too_small.stdout
    bad_mesh = run_cli("plan", "--config", "configs/llm/7b.yaml", "--gpus", "6", "experiment.distributed.tp=4")
    assert bad_mesh.returncode == 2 and "does not divide the world size 6" in bad_mesh.stderr


def test_tokenizer_train_text_wordpiece_has_4m_layout(tmp_path, text_corpus):
    output = tmp_path / "wp" / "tokenizer.json"
    result = run_cli(
        "tokenizer", "train-text", str(text_corpus), "--kind", "wordpiece", "--output", str(output),
        "--vocab-size", "4400",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from polymodal.tokenizers.text.wordpiece import coord_id, load_wordpiece

    tokenizer = load_wordpiece(output)
    assert tokenizer.encode("v0=12 cube", add_special_tokens=False).ids[0] == coord_id(0, 12)


# ---- the verb table: cheap --help, lazy verbs, dispatch to the run's family -----------------------------------

MODULES_AFTER = """
import sys
from polymodal.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)))
"""


def modules_loaded_by(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter has imported after ``polymodal <argv>`` (``--help`` exits early)."""
    code = MODULES_AFTER.format(argv=argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.strip().splitlines()[-1].split())


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in ("torch", "torchvision")}


def test_importing_the_cli_loads_no_torchvision_and_no_family():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, polymodal.cli; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules = set(result.stdout.split())
    assert "polymodal.cli" in modules
    assert not {m for m in modules if m.startswith("torchvision") or m.startswith("polymodal.families")}
    assert not _heavy(modules)  # not even torch


@pytest.mark.parametrize("verb", ["", "train", "export", "plan", "synth", "configs", "tokenizer", "generate", "eval"])
def test_engine_help_imports_neither_torch_nor_any_family(verb):
    modules = modules_loaded_by([verb, "--help"] if verb else ["--help"])
    assert not _heavy(modules)
    assert not [m for m in modules if m.startswith("polymodal.families")]


def test_a_config_mistake_is_reported_before_torch_is_imported(tiny_config):
    assert not _heavy(modules_loaded_by(["train", "--config", str(tiny_config), "experiment.totl_steps=5"]))


@pytest.mark.parametrize("verb", ["pretokenize-4m", "eval-4m"])
def test_family_verb_help_imports_only_its_family_command_line(verb):
    modules = modules_loaded_by([verb, "--help"])
    assert not _heavy(modules)
    family = {m for m in modules if m.startswith("polymodal.families")}
    assert "polymodal.families.fourm.cli" in family
    assert family <= {
        "polymodal.families",
        "polymodal.families.fourm",
        "polymodal.families.fourm.cli",
        "polymodal.families.fourm.evaluate",
        "polymodal.families.fourm.evaluate.settings",
    }


def test_every_verb_of_the_table_resolves():
    import importlib

    from polymodal.cli import VERBS

    for name, verb in VERBS.items():
        module, function = verb.target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_unknown_verb_suggests_the_closest(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def test_generate_and_eval_dispatch_on_the_family_of_the_run(tmp_path, capsys, monkeypatch):
    """An export written before the families layout still names its family (through the alias table)."""
    from polymodal.config import aliases

    monkeypatch.setattr(aliases, "_warned", set())
    export = REPO / "tests" / "fixtures" / "pre_families" / "fourm_export"
    from polymodal.commands.family import family_of

    with pytest.warns(FutureWarning):
        assert family_of(export) == "fourm"
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(export), "--help"])
    assert "--schedule" in capsys.readouterr().out  # the 4M generation options
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(export), "--help"])
    assert "--num-scenes" in capsys.readouterr().out


def test_dispatch_refuses_a_model_of_no_family(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model:\n  _target_: polymodal.models.llm.build_llm\n")
    assert main(["generate", "--model", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "belongs to no family" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    assert main(["eval", "--model", str(tmp_path)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_version_and_help_with_defaults(capsys):
    from polymodal import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"polymodal {__version__}"
    for argv, shown in (
        (["tokenizer", "train-text", "--help"], "(default: 8192)"),
        (["synth", "--help"], "(default: 1000)"),
        (["pretokenize-4m", "--help"], "(default: 64)"),
        (["eval-4m", "--help"], "(default: roar)"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert shown in out, (argv, out)
        assert "(default: None)" not in out and "(default: False)" not in out
