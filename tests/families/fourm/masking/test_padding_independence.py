"""Span masking of a caption depends only on its real tokens, never on how far the row is padded."""

import pytest
import torch

from polymodal.families.fourm.masking.alphas import DirichletMixture
from polymodal.families.fourm.masking.masker import KEEP_PROB_DECAY, FourMMasking, draw_dropped
from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.tokenizers.text.wordpiece import EOS_ID

CAPTION = list(range(300, 310)) + [EOS_ID]  # 11 tokens
PADDED_LENGTHS = (11, 19, 64, 256)
INPUT_BUDGET = 8


def upstream_kept(length: int, keep_prob: float, budget: int, generator: torch.Generator) -> torch.Tensor:
    """4M's per-sample rule on the unpadded sequence: keep each token with ``keep_prob``; while the input
    (kept tokens plus one sentinel per dropped span) exceeds ``budget``, decay ``keep_prob`` and redraw."""
    while True:
        kept = torch.rand(length, generator=generator, dtype=torch.float64) < keep_prob
        span_starts = sum(1 for i in range(length) if not kept[i] and (i == 0 or kept[i - 1]))
        if int(kept.sum()) + span_starts <= budget:
            return kept
        keep_prob *= KEEP_PROB_DECAY


def padded_row(length: int) -> torch.Tensor:
    return torch.tensor([CAPTION + [0] * (length - len(CAPTION))])


@pytest.mark.parametrize("length", PADDED_LENGTHS)
def test_dropped_tokens_match_the_unpadded_upstream_draws(length):
    valid = padded_row(length) != 0
    for seed in range(100):
        keep_prob = torch.rand(1, generator=torch.Generator().manual_seed(10_000 + seed), dtype=torch.float64)
        dropped = draw_dropped(valid, keep_prob, torch.tensor([INPUT_BUDGET]), torch.Generator().manual_seed(seed))
        expected = upstream_kept(len(CAPTION), float(keep_prob), INPUT_BUDGET, torch.Generator().manual_seed(seed))
        assert torch.equal(dropped[0, : len(CAPTION)], ~expected)
        assert not dropped[0, len(CAPTION) :].any()


def test_masked_caption_is_the_same_whatever_its_padding():
    registry = ModalityRegistry.from_config(["caption"], {"caption": {"max_tokens": 256}})
    masking = FourMMasking(registry, INPUT_BUDGET, 12, DirichletMixture.single(registry, 1.0, 1.0))
    batches = [
        masking({"caption": padded_row(length).expand(256, -1)}, torch.Generator().manual_seed(3))["caption"]
        for length in PADDED_LENGTHS
    ]
    for other in batches[1:]:
        for key in ("tensor", "is_input", "is_target"):
            assert torch.equal(batches[0][key], other[key])
    mean_inputs = batches[0]["is_input"].sum(1).double().mean()
    assert 5.0 < mean_inputs < 6.5  # the unpadded caption's share (5.84 measured upstream-style)
