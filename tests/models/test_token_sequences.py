"""ConcatenateTokens and SliceTokens against plain indexing, and their errors on bad input."""

import pytest
import torch

from polymodal.models.parts import ConcatenateTokens, SliceTokens


def test_concatenate_joins_along_positions_in_key_order():
    image, text = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    joined = ConcatenateTokens(["image", "text"], "joined")({"image": image, "text": text})["joined"]
    assert joined.shape == (2, 8, 4)
    for position in range(8):
        expected = image[:, position] if position < 5 else text[:, position - 5]
        assert torch.equal(joined[:, position], expected)


def test_concatenate_refuses_mismatched_batches_or_widths():
    block = ConcatenateTokens(["a", "b"], "joined")
    with pytest.raises(ValueError, match=r"'b' must be \[B=2, T, D=4\] tokens, got \(2, 3, 5\)"):
        block({"a": torch.randn(2, 5, 4), "b": torch.randn(2, 3, 5)})
    with pytest.raises(ValueError, match="'b' must be"):
        block({"a": torch.randn(2, 5, 4), "b": torch.randn(3, 3, 4)})
    with pytest.raises(ValueError, match="at least two read keys"):
        ConcatenateTokens(["a"], "joined")


CASES = [(0, 5, [0, 1, 2, 3, 4]), (5, -1, [5, 6]), (5, None, [5, 6, 7])]


@pytest.mark.parametrize(("start", "stop", "positions"), CASES)
def test_slice_keeps_the_named_positions(start, stop, positions):
    tokens = torch.randn(2, 8, 4)
    cut = SliceTokens("tokens", "cut", start, stop)({"tokens": tokens})["cut"]
    assert torch.equal(cut, torch.stack([tokens[:, p] for p in positions], dim=1))


def test_slice_refuses_an_empty_range():
    with pytest.raises(ValueError, match=r"'tokens' has 4 positions: slice \[5:None\] is empty"):
        SliceTokens("tokens", "cut", start=5)({"tokens": torch.randn(1, 4, 2)})
    with pytest.raises(ValueError, match="start must be >= 0"):
        SliceTokens("tokens", "cut", start=-1)
