"""Configs build only trusted callables: polymodal, torch.nn/optim, torchvision transforms, and what the user trusts
from outside the config (environment or Python), never ``builtins.open`` or ``os.system``."""

import pytest
from omegaconf import OmegaConf

from polymodal.cli import main
from polymodal.config import ConfigError, instantiate, trust_targets
from polymodal.config import trusted_targets as trusted
from polymodal.config.trusted_targets import is_trusted


@pytest.fixture(autouse=True)
def nothing_trusted_in_process(monkeypatch):
    monkeypatch.setattr(trusted, "_trusted_in_process", [])
    monkeypatch.delenv(trusted.TRUSTED_TARGETS_ENV, raising=False)


@pytest.mark.parametrize(
    "node",
    [
        {"_target_": "builtins.open", "file": "victim.txt", "mode": "w"},
        {"_target_": "os.system", "_args_": ["touch pwned"]},
        {
            "_target_": "torch.nn.Sequential",
            "_args_": [{"_target_": "builtins.open", "file": "victim.txt", "mode": "w"}],
        },
        {"_target_": "torch.load", "f": "anything.pt"},
        {"_target_": "torch.nnx.Thing"},  # a prefix covers its own modules only
    ],
)
def test_untrusted_targets_build_nothing(node, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "victim.txt").write_text("precious")
    with pytest.raises(ConfigError, match="is not trusted"):
        instantiate(OmegaConf.create(node))
    assert (tmp_path / "victim.txt").read_text() == "precious" and not (tmp_path / "pwned").exists()


def test_the_error_names_where_and_how_to_trust():
    node = OmegaConf.create({"model": {"trunk": {"blocks": [{"_target_": "mylab.Block"}]}}})
    message = r"^model\.trunk\.blocks\[0\]: _target_ 'mylab\.Block' is not trusted.*POLYMODAL_TRUSTED_TARGETS"
    with pytest.raises(ConfigError, match=message):
        instantiate(node.model)


def test_own_code_is_trusted_from_the_environment_or_python(monkeypatch):
    node = OmegaConf.create({"_target_": "types.SimpleNamespace", "a": 1})
    monkeypatch.setenv(trusted.TRUSTED_TARGETS_ENV, "collections., types")
    assert instantiate(node).a == 1
    monkeypatch.delenv(trusted.TRUSTED_TARGETS_ENV)
    with pytest.raises(ConfigError):
        instantiate(node)
    trust_targets("types.SimpleNamespace")
    assert instantiate(node).a == 1
    with pytest.raises(ValueError, match="module path"):
        trust_targets("")


def test_prefix_matching_respects_module_boundaries():
    assert is_trusted("torch.nn.Linear", ["torch.nn."]) and is_trusted("mylab.Net", ["mylab"])
    assert not is_trusted("torch.nnx.Linear", ["torch.nn."]) and not is_trusted("mylabx.Net", ["mylab"])
    assert is_trusted("mylab", ["mylab."])


def test_a_run_directory_whose_config_names_open_is_refused_by_export(tmp_path, capsys):
    """``polymodal export`` builds the model from the run's own config.yaml: a shared run directory is data."""
    (tmp_path / "victim.txt").write_text("precious")
    export = tmp_path / "export-like"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"")
    (export / "config.yaml").write_text(
        f"model:\n  _target_: builtins.open\n  file: {tmp_path / 'victim.txt'}\n  mode: w\n"
    )
    assert main(["export", "--checkpoint", str(export), "--out", str(tmp_path / "out")]) == 2
    assert "is not trusted" in capsys.readouterr().err
    assert (tmp_path / "victim.txt").read_text() == "precious"
