import pytest
import torch

from polymodal.models.layers.masks import (
    causal_mask,
    combine_masks,
    document_mask,
    padding_mask,
    prefix_causal_mask,
)


def test_causal_mask_matches_loops():
    mask = causal_mask(5)
    assert mask.shape == (5, 5) and mask.dtype == torch.bool
    for i in range(5):
        for j in range(5):
            assert bool(mask[i, j]) == (j <= i)


def test_prefix_causal_mask_matches_loops():
    prefix_lengths = torch.tensor([0, 2, 5])
    mask = prefix_causal_mask(prefix_lengths, 5)
    assert mask.shape == (3, 1, 5, 5)
    for b, prefix in enumerate(prefix_lengths.tolist()):
        for i in range(5):
            for j in range(5):
                expected = (i < prefix and j < prefix) or j <= i
                assert bool(mask[b, 0, i, j]) == expected


def test_document_mask_matches_loops():
    document_ids = torch.tensor([[0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 4, 4]])
    for causal in (True, False):
        mask = document_mask(document_ids, causal=causal)
        assert mask.shape == (2, 1, 6, 6)
        for b in range(2):
            for i in range(6):
                for j in range(6):
                    expected = document_ids[b, i] == document_ids[b, j] and (j <= i or not causal)
                    assert bool(mask[b, 0, i, j]) == bool(expected)


def test_padding_mask_blocks_padded_keys_only():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    mask = padding_mask(valid)
    assert mask.shape == (2, 1, 1, 3)
    full = mask.expand(2, 1, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                assert bool(full[b, 0, i, j]) == bool(valid[b, j])


def test_combine_masks_is_broadcast_and_skips_none():
    valid = torch.tensor([[True, True, False]])
    combined = combine_masks(None, causal_mask(3), padding_mask(valid))
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    assert combined.shape == (1, 1, 3, 3)
    assert torch.equal(combined[0, 0], expected)
    assert combine_masks(None, None) is None
    assert combine_masks() is None


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: causal_mask(0), "seq_len"),
        (lambda: prefix_causal_mask(torch.tensor([1.0]), 3), "integer"),
        (lambda: prefix_causal_mask(torch.tensor([4]), 3), "prefix_lengths"),
        (lambda: prefix_causal_mask(torch.tensor([[1]]), 3), "prefix_lengths"),
        (lambda: document_mask(torch.tensor([0, 1])), "document_ids"),
        (lambda: padding_mask(torch.ones(2, 3)), "bool"),
        (lambda: padding_mask(torch.ones(3, dtype=torch.bool)), r"\[B, T\]"),
        (lambda: combine_masks(torch.ones(2, 2)), "bool"),
        (
            lambda: combine_masks(torch.ones(2, 2, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool)),
            "broadcast",
        ),
    ],
)
def test_mask_builders_reject_bad_input(build, message):
    with pytest.raises(ValueError, match=message):
        build()
