"""Evaluators in a training run and after it: the trainer logs them at the eval cadence in metrics.jsonl, a wrong key
in the evaluators section is a one-line error, and `polymodal eval --evaluator` runs one on the trained run."""

import json
import math
from pathlib import Path

import pytest
import torch
from trainer_configs import experiment_block, optim_header

from polymodal import cli
from polymodal.checkpoint.weights import load_trained_model
from polymodal.commands.evaluator import margin_in_standard_errors
from polymodal.config import ConfigError, load_config
from polymodal.runs import load_run
from polymodal.train.evaluators import EvalContext, build_evaluators, run_evaluators
from polymodal.train.trainer import Trainer

MODEL_AND_DATA = """
model:
  _target_: polymodal.models.meta.MetaModel
  preprocessor:
    _target_: polymodal.models.meta.ModuleBlock
    read_keys: rgb
    write_keys: features
    module:
      _target_: torch.nn.Sequential
      _args_:
        - {{_target_: torch.nn.Conv2d, in_channels: 3, out_channels: 8, kernel_size: 3, stride: 2}}
        - {{_target_: torch.nn.ReLU}}
        - {{_target_: torch.nn.AdaptiveAvgPool2d, output_size: 1}}
        - {{_target_: torch.nn.Flatten}}
  head: {{_target_: polymodal.models.parts.LinearHead, dim: 8, out_dim: 5, read_key: features, write_key: logits}}
loss:
  _target_: polymodal.objectives.classification.ClassificationLoss
data:
  _target_: polymodal.data.multimodal.data_module.MultimodalData
  format: imagefolder
  train: {folder}
  val: {folder}
  modalities: [rgb, label]
  image_size: 32
  batch_size: 4
"""

EVALUATORS = """
evaluators:
  linear_probe:
    _target_: polymodal.train.evaluators.LinearProbe
    train: {{location: {folder}, split: train, image_size: 32}}
    val: {{location: {folder}, split: val, image_size: 32}}
    feature_key: features
    sweep: {{learning_rates: [0.01, 0.1], weight_decays: [0.0], epochs: 5, batch_size: 8}}
"""


def write_config(directory: Path, folder: Path, *replacements: tuple[str, str]) -> Path:
    experiment = experiment_block(
        directory / "run", total_steps=4, log_every=2, eval_every=2, eval_steps=1, ckpt_every=4
    )
    text = optim_header() + MODEL_AND_DATA.format(folder=folder) + experiment + EVALUATORS.format(folder=folder)
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = directory / "config.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained_run(eval_data, tmp_path_factory) -> tuple[Path, list[dict]]:
    directory = tmp_path_factory.mktemp("evaluated_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(load_config(write_config(directory, eval_data["folder"]))).fit()
    finally:
        torch.set_num_threads(threads)
    metrics = ("accuracy", "lr", "weight_decay", "baseline_accuracy", "samples")
    assert set(result["eval"]) == {f"linear_probe/{m}" for m in metrics}
    records = [json.loads(line) for line in (directory / "run" / "metrics.jsonl").read_text().splitlines()]
    return directory / "run", records


def test_trainer_logs_evaluator_metrics_at_the_eval_cadence(trained_run):
    _, records = trained_run
    evaluations = [record for record in records if record["split"] == "eval"]
    assert [record["step"] for record in evaluations] == [2, 4]
    for record in evaluations:
        assert 0.0 <= record["linear_probe/accuracy"] <= 1.0 and record["linear_probe/lr"] in (0.01, 0.1)


def test_offline_eval_runs_an_evaluator_on_the_trained_run(trained_run, eval_data, capsys, single_thread):
    run_dir, _ = trained_run
    assert cli.main(["eval", "--model", str(run_dir), "--evaluator", "linear_probe", "sweep.epochs=3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = load_run(run_dir)
    section = run.config.evaluators
    section.linear_probe.sweep.epochs = 3
    expected = run_evaluators(build_evaluators(section), EvalContext(run.model, run.device))
    assert printed == pytest.approx(expected) and "linear_probe/accuracy" in printed


def test_offline_eval_names_a_missing_evaluator(trained_run, capsys):
    run_dir, _ = trained_run
    assert cli.main(["eval", "--model", str(run_dir), "--evaluator", "linear_prob"]) == cli.EXIT_CONFIG_ERROR
    assert "no evaluator 'linear_prob'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    feature_key: features", "    feature_kye: features",
            "unknown key 'evaluators.linear_probe.feature_kye' — did you mean 'evaluators.linear_probe.feature_key'?"),
        ("train: {location:", "train: {locaton:",
            "evaluators.linear_probe: unknown key 'train.locaton' — did you mean 'train.location'?"),
        ("epochs: 5,", "epoch: 5,",
            "evaluators.linear_probe: unknown key 'sweep.epoch' — did you mean 'sweep.epochs'?"),
        ("_target_: polymodal.train.evaluators.LinearProbe", "kind: linear",
            "evaluators.linear_probe: expected a mapping with a _target_"),
    ],
)  # fmt: skip
def test_a_wrong_evaluators_key_is_a_one_line_error(eval_data, tmp_path, capsys, old, new, message):
    config = write_config(tmp_path, eval_data["folder"], (old, new))
    assert cli.main(["train", "--config", str(config)]) == cli.EXIT_CONFIG_ERROR
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error


def test_the_evaluators_section_must_be_a_mapping(eval_data, tmp_path):
    config = write_config(tmp_path, eval_data["folder"])
    config.write_text(config.read_text().split("evaluators:")[0] + "evaluators: [linear_probe]\n")
    with pytest.raises(ConfigError, match="evaluators: expected a mapping of str to any value"):
        load_config(config)


def test_offline_eval_takes_evaluators_from_a_config_file(trained_run, eval_data, tmp_path, capsys, single_thread):
    run_dir, _ = trained_run
    folder = eval_data["folder"]
    evaluators = tmp_path / "evaluators.yaml"
    evaluators.write_text(f"""
evaluators:
  quick_probe:
    _target_: polymodal.train.evaluators.LinearProbe
    train: {{location: {folder}, split: train, image_size: 32}}
    val: {{location: {folder}, split: val, image_size: 32, max_samples: 5}}
    sweep: {{learning_rates: [0.1], weight_decays: [0.0], epochs: 2}}
""")
    argv = ["eval", "--model", str(run_dir), "--evaluator", "quick_probe", "--config", str(evaluators)]
    assert cli.main(argv) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.strip().splitlines()[-5:])
    metrics = ("accuracy", "lr", "weight_decay", "baseline_accuracy", "samples")
    assert set(lines) == {f"quick_probe/{m}" for m in metrics}
    assert float(lines["quick_probe/samples"]) == 5
    assert float(lines["quick_probe/accuracy"]) * 5 == pytest.approx(round(float(lines["quick_probe/accuracy"]) * 5))


def test_initial_weights_are_the_ones_the_run_started_from(trained_run, eval_data, tmp_path):
    run_dir, _ = trained_run
    initial, _ = load_trained_model(run_dir, initial=True)
    started = Trainer(load_config(write_config(tmp_path, eval_data["folder"]))).model.state_dict()
    trained, _ = load_trained_model(run_dir)
    assert started.keys() == initial.state_dict().keys()
    assert all(torch.equal(started[key], value) for key, value in initial.state_dict().items())
    assert not all(torch.equal(started[key], value) for key, value in trained.state_dict().items())


def test_the_baseline_table_sets_trained_beside_initial_weights_and_the_majority(trained_run, capsys, single_thread):
    run_dir, _ = trained_run
    scores = {}
    for init in ("trained", "random"):
        assert cli.main(["eval", "--model", str(run_dir), "--evaluator", "all", "--init", init, "--json"]) == 0
        scores[init] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(["eval", "--model", str(run_dir), "--evaluator", "all", "--table"]) == 0
    header, rule, *rows = capsys.readouterr().out.strip().splitlines()[-3:]
    assert header.startswith("| evaluator/metric | trained | random init |") and rule.startswith("|---")
    (row,) = rows  # the accuracy: lr and weight decay have no baseline
    name, trained, initial, majority, margin = (cell.strip() for cell in row.strip("|").split("|"))
    assert name == "linear_probe/accuracy"
    assert float(trained) == pytest.approx(scores["trained"][name], abs=5e-4)
    assert float(initial) == pytest.approx(scores["random"][name], abs=5e-4)
    assert float(majority) == pytest.approx(scores["trained"]["linear_probe/baseline_accuracy"], abs=5e-4)
    score, reference = scores["trained"][name], max(scores["random"][name], float(majority))
    samples = scores["trained"]["linear_probe/samples"]
    spread = math.sqrt((score * (1 - score) + reference * (1 - reference)) / samples)
    expected = 0.0 if spread == 0 and score == reference else (score - reference) / spread
    assert float(margin) == pytest.approx(expected, abs=0.051)


@pytest.mark.parametrize(
    ("score", "reference", "samples", "expected"),
    [
        (0.6, 0.5, 100, 0.1 / math.sqrt((0.24 + 0.25) / 100)),  # the two-proportion normal approximation
        (0.5, 0.6, 100, -0.1 / math.sqrt((0.25 + 0.24) / 100)),
        (1.0, 0.0, 10, math.inf),  # no spread: a sure difference
        (1.0, 1.0, 10, 0.0),
    ],
)
def test_margins_are_in_standard_errors_of_the_difference(score, reference, samples, expected):
    assert margin_in_standard_errors(score, reference, samples) == pytest.approx(expected)


def test_a_margin_without_held_out_items_is_refused():
    with pytest.raises(ValueError, match="at least one held-out item"):
        margin_in_standard_errors(0.6, 0.5, 0)


def test_overrides_need_a_named_evaluator(trained_run, capsys):
    run_dir, _ = trained_run
    argv = ["eval", "--model", str(run_dir), "--evaluator", "all", "sweep.epochs=3"]
    assert cli.main(argv) == cli.EXIT_CONFIG_ERROR
    assert "name it instead of 'all'" in capsys.readouterr().err


def test_table_with_initial_weights_only_is_a_one_line_error(trained_run, capsys):
    run_dir, _ = trained_run
    argv = ["eval", "--model", str(run_dir), "--evaluator", "all", "--table", "--init", "random"]
    assert cli.main(argv) == cli.EXIT_CONFIG_ERROR
    assert "leave out --init random" in capsys.readouterr().err


def test_all_evaluators_of_a_config_without_any_is_a_one_line_error(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    empty = tmp_path / "empty.yaml"
    empty.write_text("evaluators: {}\n")
    argv = ["eval", "--model", str(run_dir), "--evaluator", "all", "--config", str(empty)]
    assert cli.main(argv) == cli.EXIT_CONFIG_ERROR
    assert "has no evaluators: section to run" in capsys.readouterr().err
