"""Shared 4M test pieces: a small modality registry (masking, data) and tiny random 4M models (generation,
evaluation), all on one intra-op thread."""

import pytest
import torch

from polymodal.data.synth.scene import SHAPES
from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.families.fourm.model import build_fourm

SMALL_MODALITIES = {
    "rgb@32": {"patch_size": 8},
    "tok_rgb@32": {"vocab_size": 64, "patch_size": 8},
    "tok_depth@32": {"vocab_size": 64, "patch_size": 8},
    "caption": {"max_tokens": 12},
    "det": {"max_tokens": 10},
    "t5_caption": {"max_tokens": 6, "embedding_dim": 4},
}

SIZE = 32
CODEBOOK = 64
TEXT_VOCAB = 4 + 200 + 4 * 1000 + len(SHAPES) + 300
TINY_MODEL_MODALITIES = {
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
    return build_fourm("tiny", TINY_MODEL_MODALITIES, **MODEL_SETTINGS).eval()


@pytest.fixture(autouse=True)
def one_thread_per_test(single_thread):
    """Tiny 4M models run on one intra-op thread (``single_thread``, tests/conftest.py): the CPU is shared."""


@pytest.fixture(scope="session")
def registry() -> ModalityRegistry:
    return ModalityRegistry.from_config(list(SMALL_MODALITIES), SMALL_MODALITIES)


@pytest.fixture(scope="session")
def fourm_builder():
    """``tiny_fourm`` for tests that need fresh models (conftest modules are not importable from tests)."""
    return tiny_fourm


@pytest.fixture(scope="session")
def fourm_modalities():
    """The tiny model's ``build_fourm`` modalities config."""
    return TINY_MODEL_MODALITIES
