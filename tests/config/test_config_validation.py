import dataclasses

import pytest
from omegaconf import OmegaConf

from polymodal.config import (
    ConfigError,
    ExperimentConfig,
    InitFromConfig,
    NonFiniteConfig,
    WandbConfig,
    experiment_config,
    load_config,
    validate_config,
)

SECTIONS = {"model": {}, "data": {}, "optim": {}, "loss": {}}


def config_with(experiment=None, **sections):
    body = {**SECTIONS, **sections}
    if experiment is not None:
        body["experiment"] = experiment
    return OmegaConf.create(body)


def error_message(cfg) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(cfg)
    return str(caught.value)


def test_absent_experiment_takes_schema_defaults():
    root = validate_config(config_with())
    assert root.experiment == ExperimentConfig()
    assert root.constants == {} and root.metrics is None
    assert ExperimentConfig().init_from.include == ["*"] and ExperimentConfig().wandb.tags == []


def test_values_are_typed_and_nested_sections_become_dataclasses():
    experiment = {
        "total_steps": 7,
        "grad_clip": 2,  # int accepted where float is expected
        "precision": "bf16",
        "peak_flops": 1e12,
        "nonfinite": {"policy": "stop"},
        "wandb": {"enabled": True, "tags": ["a", "b"], "entity": "me"},
        "init_from": {"path": "ckpt", "rename": {"old.": "new."}, "exclude": ["head.*"]},
    }
    typed = experiment_config(config_with(experiment, constants={"dim": 8}))
    assert typed.total_steps == 7 and typed.precision == "bf16"
    assert typed.grad_clip == 2.0 and type(typed.grad_clip) is float
    assert typed.nonfinite == NonFiniteConfig(policy="stop", max_skips=10)
    assert typed.wandb == WandbConfig(enabled=True, tags=["a", "b"], entity="me")
    assert typed.init_from == InitFromConfig(path="ckpt", rename={"old.": "new."}, exclude=["head.*"])
    assert type(typed.wandb.tags) is list and type(typed.init_from.rename) is dict


def test_any_sections_are_not_checked_inside():
    root = validate_config(config_with(model={"_target_": "x.Y", "whatever": [1, {"k": None}]}, metrics={"m": 1}))
    assert root.model.whatever[1].k is None and root.metrics.m == 1


def test_misspelt_experiment_key_suggests_the_right_one():
    message = error_message(config_with({"totl_steps": 5}))
    assert message == "unknown key 'experiment.totl_steps' — did you mean 'experiment.total_steps'?"


def test_misspelt_nested_key_suggests_the_right_one():
    assert error_message(config_with({"wandb": {"projct": "p"}})) == (
        "unknown key 'experiment.wandb.projct' — did you mean 'experiment.wandb.project'?"
    )


def test_unknown_top_level_section_suggests():
    message = error_message(OmegaConf.create({**SECTIONS, "modle": {}}))
    assert message == "unknown top-level section 'modle' — did you mean 'model'?"


@pytest.mark.parametrize("section", ["model", "data", "optim", "loss"])
def test_missing_required_section(section):
    body = {name: value for name, value in SECTIONS.items() if name != section}
    assert error_message(OmegaConf.create(body)) == f"missing required section '{section}'"


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ({"total_steps": "abc"}, "experiment.total_steps: expected int, got 'abc' (str)"),
        ({"log_every": 1.5}, "experiment.log_every: expected int, got 1.5 (float)"),
        ({"seed": True}, "experiment.seed: expected int, got True (bool)"),
        ({"debug": "yes"}, "experiment.debug: expected bool, got 'yes' (str)"),
        ({"precision": "fp16"}, "experiment.precision: expected one of 'fp32', 'bf16', got 'fp16' (str)"),
        ({"device": "tpu"}, "experiment.device: expected one of 'auto', 'cpu', 'cuda', got 'tpu' (str)"),
        ({"grad_clip": "big"}, "experiment.grad_clip: expected float, got 'big' (str)"),
        ({"peak_flops": "abc"}, "experiment.peak_flops: expected float or null, got 'abc' (str)"),
        ({"name": None}, "experiment.name: expected str, got None (null)"),
        ({"wandb": {"tags": ["a", 1]}}, "experiment.wandb.tags[1]: expected str, got 1 (int)"),
        (
            {"wandb": {"mode": "cloud"}},
            "experiment.wandb.mode: expected one of 'online', 'offline', 'disabled'",
        ),
        ({"init_from": {"rename": {"a": 1}}}, "experiment.init_from.rename.a: expected str, got 1 (int)"),
        (
            {"init_from": {"include": "*"}},
            "experiment.init_from.include: expected a list of str, got '*' (str)",
        ),
        ({"nonfinite": 3}, "experiment.nonfinite: expected a mapping, got 3 (int)"),
        ({"nonfinite": {"policy": "ignore"}}, "experiment.nonfinite.policy: expected one of 'skip', 'stop'"),
    ],
)
def test_wrong_types_name_key_expectation_and_value(experiment, expected):
    assert expected in error_message(config_with(experiment))


def test_experiment_section_must_be_a_mapping():
    assert error_message(config_with("fast")) == "experiment: expected a mapping, got 'fast' (str)"


@pytest.mark.parametrize(
    "key", ["total_steps", "log_every", "ckpt_every", "eval_every", "keep_last", "grad_accum_steps"]
)
def test_positive_int_fields_reject_zero(key):
    assert error_message(config_with({key: 0})) == f"experiment.{key} must be > 0, got 0 (int)"


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ({"resume": ""}, "experiment.resume must be a non-empty string"),
        ({"grad_clip": -1.0}, "experiment.grad_clip must be >= 0"),
        ({"nonfinite": {"max_skips": -1}}, "experiment.nonfinite.max_skips must be >= 0"),
        ({"peak_flops": 0}, "experiment.peak_flops must be > 0"),
    ],
)
def test_value_rules(experiment, expected):
    assert expected in error_message(config_with(experiment))


def test_grad_clip_zero_and_resume_path_are_valid():
    typed = experiment_config(config_with({"grad_clip": 0, "resume": "runs/old/ckpt"}))
    assert typed.grad_clip == 0.0 and typed.resume == "runs/old/ckpt"


def test_load_config_fills_every_default_into_the_returned_config(write_yaml):
    path = write_yaml("main.yaml", "model: {}\ndata: {}\noptim: {}\nloss: {}\nexperiment: {wandb: {enabled: true}}\n")
    cfg = load_config(path, overrides=["experiment.seed=3"])
    expected = dataclasses.asdict(ExperimentConfig(seed=3, wandb=WandbConfig(enabled=True)))
    assert OmegaConf.to_container(cfg.experiment) == expected
    assert OmegaConf.to_container(cfg.constants) == {} and cfg.metrics is None


def test_load_config_rejects_misspelt_experiment_key(write_yaml):
    path = write_yaml("main.yaml", "model: {}\ndata: {}\noptim: {}\nloss: {}\nexperiment: {totl_steps: 5}\n")
    with pytest.raises(ConfigError, match="did you mean 'experiment.total_steps'"):
        load_config(path)
