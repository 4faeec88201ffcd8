"""Top-k / top-p filtering and seeded token sampling against plain one-row-at-a-time references."""

import math

import pytest
import torch

from polymodal.models.sampling import filter_logits, sample_tokens, top_k_count


def naive_filter(row: list[float], top_k: int, top_p: float) -> list[float]:
    """One row, with Python lists: keep logits >= the k-th largest, then the nucleus (first always kept)."""
    kept = list(row)
    if top_k:
        kth = sorted(row, reverse=True)[top_k - 1]
        kept = [value if value >= kth else -math.inf for value in kept]
    if top_p:
        total = sum(math.exp(value) for value in kept if value != -math.inf)
        order = sorted(range(len(kept)), key=lambda index: -kept[index])
        cumulative, keep = 0.0, set()
        for index in order:
            if cumulative > top_p:
                break
            keep.add(index)
            cumulative += math.exp(kept[index]) / total if kept[index] != -math.inf else 0.0
        kept = [value if index in keep else -math.inf for index, value in enumerate(kept)]
    return kept


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.0), (3, 0.0), (0, 0.5), (5, 0.9), (1, 0.3), (0, 1.0)])
def test_filter_matches_naive_reference(top_k, top_p):
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(top_k))
    filtered = filter_logits(logits, top_k, top_p)
    expected = torch.tensor([naive_filter(row, top_k, top_p) for row in logits.double().tolist()])
    assert torch.equal(torch.isinf(filtered), torch.isinf(expected))
    assert torch.equal(filtered[~torch.isinf(filtered)], logits[~torch.isinf(filtered)])


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_p=1e-6)).tolist() == [[False, True, True]]


def test_top_k_fraction_and_bad_values():
    assert top_k_count(0.25, 100) == 25 and top_k_count(500, 100) == 100 and top_k_count(0, 7) == 7
    logits = torch.arange(8.0)[None]
    assert torch.isinf(filter_logits(logits, top_k=0.5)).sum() == 4
    for bad in (-1, True, "3"):
        with pytest.raises(ValueError, match="top_k"):
            top_k_count(bad, 10)
    with pytest.raises(ValueError, match="keeps no token"):
        top_k_count(0.01, 10)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=-0.1)


def test_sampling_equals_multinomial_on_naive_tempered_filtered_probabilities():
    logits = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))
    samples, probs = sample_tokens(logits, 0.7, torch.Generator().manual_seed(3), top_k=4, top_p=0.9)
    reference = torch.tensor([naive_filter(row, 4, 0.9) for row in logits.double().tolist()]).float()
    reference = torch.softmax(reference / 0.7, dim=-1)
    expected = torch.multinomial(reference, 1, generator=torch.Generator().manual_seed(3))[:, 0]
    assert torch.equal(samples, expected)
    assert torch.allclose(probs, reference.gather(1, expected[:, None])[:, 0])
    assert not torch.isinf(logits.gather(1, samples[:, None])).any() and (probs > 0).all()


def test_zero_temperature_takes_the_argmax_with_probability_one():
    logits = torch.randn(4, 6)
    samples, probs = sample_tokens(logits, 0.0, torch.Generator(), top_k=2)
    assert torch.equal(samples, logits.argmax(-1)) and torch.equal(probs, torch.ones(4))
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(logits, -1.0, torch.Generator())


def test_same_seed_same_samples():
    logits = torch.randn(64, 50)
    first = sample_tokens(logits, 1.0, torch.Generator().manual_seed(7))[0]
    assert torch.equal(first, sample_tokens(logits, 1.0, torch.Generator().manual_seed(7))[0])
    assert not torch.equal(first, sample_tokens(logits, 1.0, torch.Generator().manual_seed(8))[0])
