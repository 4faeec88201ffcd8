"""The experiment configs ship with the package and are usable from any directory."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from polymodal.cli import main
from polymodal.config import load_config
from polymodal.config.loader import find_config, shipped_configs

REPO = Path(__file__).resolve().parents[2]


def test_readme_config_paths_work_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("configs/llm/tiny.yaml") == shipped_configs() / "llm" / "tiny.yaml"
    assert find_config("llm/tiny") == shipped_configs() / "llm" / "tiny.yaml"
    cfg = load_config("configs/fourm/tiny.yaml", ["constants.dim=64"])
    assert cfg.model.dim == 64
    assert "input_alphas" in cfg.data.alphas.alphas_mixture["caption"]  # included from beside the file


def test_list_show_and_copy(tmp_path, capsys, monkeypatch):
    assert main(["configs", "list"]) == 0
    experiments, parts = capsys.readouterr().out.split("parts they compose")
    assert {"llm/tiny", "fourm/tiny", "tokenizers/rgb_tiny", "llm/7b"} <= set(experiments.split())
    assert {"fourm/alphas/all2all_a0.5", "llm/model", "tokenizers/base_tiny"} <= set(parts.split())
    assert not set(experiments.split()) & set(parts.split())
    assert main(["configs", "show", "llm/tiny", "constants.dim=96"]) == 0
    assert "dim: 96" in capsys.readouterr().out
    assert main(["configs", "copy", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "llm" / "tiny.yaml").read_text() == (
        shipped_configs() / "llm" / "tiny.yaml"
    ).read_text()
    assert main(["configs", "copy", str(tmp_path / "mine")]) == 2  # never over an existing folder
    assert main(["configs", "show", "llm/no_such"]) == 2
    assert "polymodal configs list" in capsys.readouterr().err


def test_the_wheel_carries_the_configs(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # the build backend pyproject.toml asks for
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("polymodal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"polymodal/configs/{p.relative_to(shipped_configs())}" for p in shipped_configs().rglob("*.yaml")}
    assert shipped and shipped <= names
