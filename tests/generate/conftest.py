"""Tiny random 4M models for the generation tests (one intra-op thread: the CPU is shared)."""

import pytest
import torch

from polymodal.data.synth.scene import SHAPES
from polymodal.models.fourm import build_fourm

SIZE = 32
CODEBOOK = 64
TEXT_VOCAB = 4 + 200 + 4 * 1000 + len(SHAPES) + 300
MODALITIES = {
    "names": ["rgb@32", "tok_depth@32", "tok_rgb@32", "caption", "det"],
    "overrides": {
        "rgb@32": {"patch_size": 8},
        "tok_depth@32": {"vocab_size": CODEBOOK, "patch_size": 8},
        "tok_rgb@32": {"vocab_size": CODEBOOK, "patch_size": 8},
        "caption": {"vocab_size": TEXT_VOCAB, "max_tokens": 10},
        "det": {"vocab_size": TEXT_VOCAB, "max_tokens": 12},
    },
}
MODEL_SETTINGS = dict(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2, num_encoder_tokens=8, num_decoder_tokens=8)


def tiny_fourm(seed: int = 0):
    torch.manual_seed(seed)
    return build_fourm("tiny", MODALITIES, **MODEL_SETTINGS).eval()


@pytest.fixture(autouse=True)
def one_thread_per_test(single_thread):
    """Applies ``single_thread`` (tests/conftest.py) to every test in this folder."""


@pytest.fixture(scope="module")
def model():
    return tiny_fourm()


@pytest.fixture(scope="session")
def fourm_builder():
    """``tiny_fourm`` for tests that need fresh models (conftest modules are not importable from tests)."""
    return tiny_fourm


@pytest.fixture(scope="session")
def fourm_modalities():
    """The tiny model's ``build_fourm`` modalities config."""
    return MODALITIES
