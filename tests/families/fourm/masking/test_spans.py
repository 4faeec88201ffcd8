import pytest
import torch

from polymodal.families.fourm.masking.spans import max_target_length, span_corrupt, target_window
from polymodal.tokenizers.text.wordpiece import sentinel_id

S0 = sentinel_id(0)


def naive_span_masking(ids: list[int], dropped: list[bool]) -> tuple[list[int], list[int]]:
    """4M's simple_span_masking, one token at a time, from given drop flags."""
    inputs, targets, previous_dropped, spans = [], [], False, 0
    for token, drop in zip(ids, dropped, strict=True):
        if drop:
            if not previous_dropped:
                spans += 1
                inputs.append(S0 + spans)
                targets.append(S0 + spans)
            targets.append(token)
        else:
            inputs.append(token)
        previous_dropped = drop
    targets.append(S0 + spans + 1)
    return inputs, targets


def naive_truncation(targets: list[int], budget: int, choice: float) -> list[int]:
    """4M's target truncation with the sentinel pick c = floor(choice * max(1, len(s) - 1))."""
    if len(targets) <= budget:
        return targets
    sentinels = [i for i, token in enumerate(targets) if S0 < token <= S0 + 199]
    picked = sentinels[int(choice * max(1, len(sentinels) - 1))]
    if len(targets) - picked >= budget:
        return targets[picked : picked + budget]
    return targets[next(i for i in sentinels if len(targets) - i <= budget) :]


def corrupt_one(ids: list[int], dropped: list[bool]):
    ids_t = torch.tensor([ids])
    return span_corrupt(ids_t, torch.ones_like(ids_t, dtype=torch.bool), torch.tensor([dropped]), S0)


def row(tensor: torch.Tensor, length) -> list[int]:
    return tensor[: int(length)].tolist()


def test_reference_vectors():
    ids = [100, 101, 102, 103, 104, 3]
    everything = corrupt_one(ids, [True] * 6)
    assert row(everything.inputs[0], everything.input_lengths[0]) == [5]
    assert row(everything.targets[0], everything.target_lengths[0]) == [5, 100, 101, 102, 103, 104, 3, 6]
    nothing = corrupt_one(ids, [False] * 6)
    assert row(nothing.inputs[0], nothing.input_lengths[0]) == ids
    assert row(nothing.targets[0], nothing.target_lengths[0]) == [5]


def test_docstring_example():
    corruption = corrupt_one([100, 101, 102, 103], [False, True, True, False])
    assert row(corruption.inputs[0], corruption.input_lengths[0]) == [100, S0 + 1, 103]
    assert row(corruption.targets[0], corruption.target_lengths[0]) == [S0 + 1, 101, 102, S0 + 2]


def random_rows(batch: int, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    valid = torch.arange(length) < lengths[:, None]
    ids = torch.where(valid, torch.randint(300, 400, (batch, length), generator=g), 0)
    dropped = torch.rand(batch, length, generator=g) < torch.rand(batch, 1, generator=g)
    return ids, valid, dropped, lengths


@pytest.mark.parametrize("length", [1, 2, 7, 16])
def test_matches_the_naive_reference(length):
    ids, valid, dropped, lengths = random_rows(300, length, seed=length)
    corruption = span_corrupt(ids, valid, dropped, S0)
    assert corruption.targets.shape == (300, max_target_length(length))
    for b in range(300):
        n = int(lengths[b])
        inputs, targets = naive_span_masking(ids[b, :n].tolist(), dropped[b, :n].tolist())
        assert row(corruption.inputs[b], corruption.input_lengths[b]) == inputs
        assert row(corruption.targets[b], corruption.target_lengths[b]) == targets
        assert (corruption.inputs[b, len(inputs) :] == 0).all() and (corruption.targets[b, len(targets) :] == 0).all()
        sentinel_positions = [i for i, token in enumerate(targets) if token > S0 and token < 300]
        assert corruption.sentinel_positions[b, : len(sentinel_positions)].tolist() == sentinel_positions
        kept_sources = [t for t in range(n) if not dropped[b, t]]
        sources = corruption.input_source[b, : len(inputs)].tolist()
        assert [s for s in sources if s >= 0] == kept_sources and sources.count(-1) == int(corruption.num_spans[b])


@pytest.mark.parametrize("length", [3, 12])
def test_truncation_matches_the_naive_reference(length):
    ids, valid, dropped, lengths = random_rows(400, length, seed=10 + length)
    corruption = span_corrupt(ids, valid, dropped, S0)
    g = torch.Generator().manual_seed(length)
    budget = torch.randint(0, length + 4, (400,), generator=g)
    choice = torch.rand(400, generator=g, dtype=torch.float64)
    start, window = target_window(corruption, budget, choice)
    truncated = 0
    for b in range(400):
        full = row(corruption.targets[b], corruption.target_lengths[b])
        expected = naive_truncation(full, int(budget[b]), float(choice[b]))
        assert full[int(start[b]) : int(start[b] + window[b])] == expected
        assert len(expected) <= budget[b] and (not expected or expected[0] > S0 and expected[0] < 300)
        truncated += len(full) > budget[b]
    assert truncated > 50
