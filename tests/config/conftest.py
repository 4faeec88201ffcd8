import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REQUIRED_SECTIONS = "model: {}\ndata: {}\noptim: {}\nloss: {}\n"


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str, str], Path]:
    """write_yaml("dir/name.yaml", text) writes dedented text under tmp_path and returns the path."""

    def write(relative_path: str, text: str) -> Path:
        path = tmp_path / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def required_sections() -> str:
    """YAML for the four required top-level sections, empty."""
    return REQUIRED_SECTIONS
