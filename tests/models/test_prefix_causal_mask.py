"""PrefixCausalMask against a mask built with loops, with and without extra (CLS/register) tokens: its dense mask
and its FlexAttention rule alike."""

import pytest
import torch
from mask_rule_checks import evaluate_mask_mod

from polymodal.models.parts import PrefixCausalMask


def loop_mask(prefix_lengths: list[int], num_patches: int, extra: int) -> torch.Tensor:
    """Query q may attend key k iff k <= q, or k is an extra token, or k is a patch inside the prefix."""
    size = extra + num_patches
    mask = torch.zeros(len(prefix_lengths), 1, size, size, dtype=torch.bool)
    for b, prefix in enumerate(prefix_lengths):
        for q in range(size):
            for k in range(size):
                mask[b, 0, q, k] = k <= q or k < extra or k - extra < prefix
    return mask


@pytest.mark.parametrize("extra", [0, 1, 3])
def test_mask_matches_loops(extra):
    prefix_lengths = [0, 1, 3, 5]
    tokens = torch.randn(4, extra + 5, 8)
    data = {"tokens": tokens, "prefix_lengths": torch.tensor(prefix_lengths), "num_extra_tokens": extra}
    rule = PrefixCausalMask()(data)["attn_mask"]
    mask = rule.dense()
    assert mask.dtype == torch.bool
    assert torch.equal(mask, loop_mask(prefix_lengths, 5, extra))
    assert torch.equal(evaluate_mask_mod(rule), mask)


def test_full_prefix_is_bidirectional_and_extra_tokens_never_see_later_patches():
    data = {"tokens": torch.randn(2, 6, 4), "prefix_lengths": torch.tensor([5, 2]), "num_extra_tokens": 1}
    mask = PrefixCausalMask()(data)["attn_mask"].dense()
    assert mask[0].all()
    cls_row = mask[1, 0, 0]
    assert cls_row.tolist() == [True, True, True, False, False, False]  # itself and the 2 prefix patches


def test_without_extra_tokens_key():
    block = PrefixCausalMask(extra_tokens_key=None)
    assert block.read_keys == ("tokens", "prefix_lengths")
    mask = block({"tokens": torch.randn(1, 4, 2), "prefix_lengths": torch.tensor([2])})["attn_mask"].dense()
    assert torch.equal(mask, loop_mask([2], 4, 0))


def test_bad_prefix_lengths_are_named():
    block = PrefixCausalMask()
    with pytest.raises(ValueError, match=r"\[B=2\]"):
        block({"tokens": torch.randn(2, 5, 4), "prefix_lengths": torch.tensor([1, 2, 3]), "num_extra_tokens": 0})
    with pytest.raises(ValueError, match=r"\[0, N=4\]"):
        block({"tokens": torch.randn(2, 5, 4), "prefix_lengths": torch.tensor([1, 5]), "num_extra_tokens": 1})
