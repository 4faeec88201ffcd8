"""Fixtures writing small real record sets and data configs in the test's tmp_path."""

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from lumina_corpus import lumina_inputs  # noqa: F401 - a session fixture shared by the Lumina tests
from lumina_records import write_record_set


@pytest.fixture
def record_set(tmp_path) -> Callable[..., Path]:
    """``record_set(name, lengths, **options)``: :func:`write_record_set` in ``tmp_path / name``."""

    def make(name: str, lengths: Sequence[int], **options) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True)
        return write_record_set(root, [int(n) for n in lengths], **options)

    return make


@pytest.fixture
def data_config(tmp_path) -> Callable[..., Path]:
    """``data_config(text, name="data.yaml")``: a data config file in ``tmp_path``."""

    def make(text: str, name: str = "data.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return make
