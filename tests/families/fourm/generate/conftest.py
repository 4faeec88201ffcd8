"""The generation tests share one tiny random 4M per module."""

import pytest


@pytest.fixture(scope="module")
def model(fourm_builder):
    return fourm_builder()
