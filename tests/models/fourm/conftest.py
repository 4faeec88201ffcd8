"""The 4M tests run tiny models: every test here gets one intra-op thread (tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def one_thread_per_test(single_thread):
    """Applies ``single_thread`` to every test in this folder."""
