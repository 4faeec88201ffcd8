"""The layering of docs/architecture.md holds (``lint-imports`` with the contracts in pyproject.toml), and a wrong
import breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with ``root/pyproject.toml``'s contracts."""
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_its_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "broken"),
    [
        ("polymodal/models/bad.py", "import polymodal.families.fourm.loss", "polymodal.models is not allowed"),
        ("polymodal/train/bad.py", "import polymodal.families.fourm.model", "polymodal.train is not allowed to import"),
        ("polymodal/models/bad.py", "import polymodal.data.order", "polymodal.models is not allowed to import"),
        ("polymodal/objectives/bad.py", "import polymodal.train.optim", "polymodal.objectives is not allowed"),
        ("polymodal/tokenizers/bad.py", "import polymodal.data.synth.render", "polymodal.tokenizers is not allowed"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, module, bad_import, broken):
    shutil.copytree(REPO / "polymodal", tmp_path / "polymodal", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(f'"""A deliberately wrong import."""\n\n{bad_import}\n')
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in result.stdout and "1 broken" in result.stdout, result.stdout
