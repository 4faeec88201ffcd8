"""Configs and exports written before the families layout (fixtures made by that code, tests/fixtures/pre_families)
still load: their old ``_target_`` paths map to the new modules, with one warning per old path."""

import importlib
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from polymodal.checkpoint.weights import load_trained_model
from polymodal.config import aliases, instantiate
from polymodal.config.aliases import MOVED_MODULES, current_target, update_targets
from polymodal.families.fourm.model import FourM
from polymodal.tokenizers.image.tokenizer import ImageTokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pre_families"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each old path warns once per process; every test here starts as a fresh process would."""
    monkeypatch.setattr(aliases, "_warned", set())


def targets(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets(value)]
    return []


def test_a_fourm_export_of_the_old_layout_loads_strictly():
    with pytest.warns(FutureWarning, match="'polymodal.models.fourm' has moved to 'polymodal.families.fourm.model'"):
        model, config_yaml = load_trained_model(FIXTURES / "fourm_export")
    assert isinstance(model, FourM)
    saved = load_file(str(FIXTURES / "fourm_export" / "model.safetensors"))
    state = model.state_dict()
    for key, tensor in saved.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)
    assert "polymodal.models.fourm.build_fourm" in config_yaml  # the file itself is left as it was


def test_an_old_tokenizer_export_encodes_as_it_did():
    model, _ = load_trained_model(FIXTURES / "tokenizer_export")
    assert isinstance(model, ImageTokenizer)
    expected = load_file(str(FIXTURES / "tokenizer_export" / "expected_codes.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode(expected["images"]), expected["codes"], rtol=0, atol=0)


def test_every_target_of_an_old_run_config_resolves_to_a_new_module():
    config = OmegaConf.to_container(OmegaConf.load(FIXTURES / "fourm_tiny_run_config.yaml"))
    old = targets(config)
    assert any(target.startswith("polymodal.data.fourm") for target in old)
    for target in old:
        module, _, name = current_target(target).rpartition(".")
        assert hasattr(importlib.import_module(module), name), target


def test_an_old_run_config_builds_its_model_and_warns_once_per_path():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            config = OmegaConf.load(FIXTURES / "fourm_tiny_run_config.yaml")
            assert isinstance(instantiate(config.model), FourM)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert len(messages) == len(set(messages)) == 2, messages  # models.fourm and data.fourm.data, once each
    assert config.model._target_ == "polymodal.families.fourm.model.build_fourm"
    assert config.model.modalities._target_ == "polymodal.families.fourm.data.fourm_registry"


def test_update_targets_leaves_interpolations_unresolved():
    config = OmegaConf.create(
        {"size": 3, "model": {"_target_": "polymodal.data.fourm.modalities.ModalityRegistry", "n": "${size}"}}
    )
    update_targets(config.model)
    assert config.model._target_ == "polymodal.families.fourm.modalities.ModalityRegistry"
    assert OmegaConf.to_container(config.model)["n"] == "${size}"


def test_new_paths_are_untouched_and_every_new_module_exists():
    assert current_target("polymodal.models.llm.build_llm") == "polymodal.models.llm.build_llm"
    for new in set(MOVED_MODULES.values()):
        importlib.import_module(new)
