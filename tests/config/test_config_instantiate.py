import functools
import types

import pytest
import torch
from omegaconf import OmegaConf

from polymodal.config import ConfigError, instantiate


def test_target_builds_object_with_node_arguments():
    layer = instantiate(OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}))
    assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (2, 3)


def test_call_time_kwargs_override_and_complete_the_node():
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 3})
    layer = instantiate(node, in_features=5, out_features=4, bias=False)
    assert layer.weight.shape == (4, 5) and layer.bias is None


def test_partial_returns_a_partial_that_the_caller_completes():
    factory = instantiate(OmegaConf.create({"_target_": "torch.nn.Linear", "_partial_": True, "out_features": 2}))
    assert isinstance(factory, functools.partial)
    first, second = factory(in_features=3), factory(in_features=3)
    assert first.weight.shape == (2, 3) and first is not second


def test_nested_targets_are_built_first():
    node = OmegaConf.create(
        {
            "_target_": "torch.nn.Sequential",
            "_args_": [
                {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 3},
                {"_target_": "torch.nn.ReLU"},
            ],
        }
    )
    model = instantiate(node)
    assert isinstance(model[0], torch.nn.Linear) and isinstance(model[1], torch.nn.ReLU)
    inputs = torch.randn(2, 4)
    torch.testing.assert_close(model(inputs), torch.relu(inputs @ model[0].weight.T + model[0].bias))


def test_containers_arrive_as_plain_python_and_objects_pass_through(monkeypatch):
    monkeypatch.setenv("POLYMODAL_TRUSTED_TARGETS", "types.SimpleNamespace")
    module = torch.nn.ReLU()
    built = instantiate(
        OmegaConf.create({"_target_": "types.SimpleNamespace", "sizes": [1, 2], "opts": {"a": {"b": [3]}}}),
        module=module,
    )
    assert isinstance(built, types.SimpleNamespace)
    assert type(built.sizes) is list and type(built.opts) is dict and type(built.opts["a"]["b"]) is list
    assert built.module is module


def test_none_instantiates_to_none():
    assert instantiate(None) is None


def config_with_model(model: dict):
    return OmegaConf.create({"model": {"trunk": model}})


def test_unknown_target_names_config_path_and_target():
    cfg = config_with_model({"_target_": "torch.nn.Linearr", "in_features": 2})
    with pytest.raises(ConfigError, match=r"^cannot instantiate 'model\.trunk' \(_target_: torch\.nn\.Linearr\): "):
        instantiate(cfg.model.trunk)


def test_unknown_module_names_config_path_and_target(monkeypatch):
    monkeypatch.setenv("POLYMODAL_TRUSTED_TARGETS", "no_such_package.")
    cfg = config_with_model({"_target_": "no_such_package.Block"})
    with pytest.raises(ConfigError, match=r"'model\.trunk' \(_target_: no_such_package\.Block\).*no_such_package"):
        instantiate(cfg.model)


def test_wrong_argument_name_names_nested_path_and_argument():
    cfg = config_with_model({"inner": {"_target_": "torch.nn.Linear", "in_features": 2, "out_feature": 3}})
    with pytest.raises(ConfigError) as caught:
        instantiate(cfg.model)
    message = str(caught.value)
    assert message.startswith("cannot instantiate 'model.trunk.inner' (_target_: torch.nn.modules.linear.Linear)")
    assert "TypeError" in message and "out_feature" in message and "\n" not in message
    assert message.endswith("got an unexpected keyword argument 'out_feature' — did you mean 'out_features'?")


def test_config_error_raised_by_a_target_is_kept(tmp_path):
    missing = tmp_path / "absent.yaml"
    node = OmegaConf.create({"_target_": "polymodal.config.load_config", "path": str(missing)})
    with pytest.raises(
        ConfigError,
        match=r"^config file not found: .*absent\.yaml \(`polymodal configs list` shows the shipped ones\)$",
    ):
        instantiate(node)


def test_plain_dict_node_without_config_path_is_named_top_level():
    with pytest.raises(ConfigError, match=r"^cannot instantiate the top-level node \(_target_: torch\.nn\.Linearr\)"):
        instantiate({"_target_": "torch.nn.Linearr"})
