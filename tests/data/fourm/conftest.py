"""A small 4M registry for the masking tests: two token grids, pixels, two text modalities and a seq_emb."""

import pytest

from polymodal.data.fourm.modalities import ModalityRegistry

SMALL_MODALITIES = {
    "rgb@32": {"patch_size": 8},
    "tok_rgb@32": {"vocab_size": 64, "patch_size": 8},
    "tok_depth@32": {"vocab_size": 64, "patch_size": 8},
    "caption": {"max_tokens": 12},
    "det": {"max_tokens": 10},
    "t5_caption": {"max_tokens": 6, "embedding_dim": 4},
}


@pytest.fixture(scope="session")
def registry() -> ModalityRegistry:
    return ModalityRegistry.from_config(list(SMALL_MODALITIES), SMALL_MODALITIES)
