"""Prefix lengths as loader batch transforms: uniform in [1, N - 1], different across ranks, identical for the same
global position (any worker count, after a resume), fixed for evaluation."""

import json

import pytest
import torch

from polymodal.data.multimodal.loader import ResumableLoader
from polymodal.data.multimodal.prefix import FixedPrefixLengths, RandomPrefixLengths

NUM_PATCHES = 16


class Images:
    def __len__(self) -> int:
        return 64

    def __getitem__(self, sample_id: int) -> dict:
        return {"image": torch.full((1, 2, 2), float(sample_id))}


def loader(dp_rank: int = 0, dp_world: int = 2, num_workers: int = 0, seed: int = 0) -> ResumableLoader:
    return ResumableLoader(
        Images(), batch_size=4, seed=seed, dp_rank=dp_rank, dp_world=dp_world, num_workers=num_workers,
        batch_transform=RandomPrefixLengths(NUM_PATCHES),
    )  # fmt: skip


def lengths(source: ResumableLoader, steps: int) -> list[list[int]]:
    return [next(source)["prefix_lengths"].tolist() for _ in range(steps)]


def test_ranks_draw_different_streams_and_the_same_position_draws_the_same():
    rank0, rank1 = lengths(loader(0), 6), lengths(loader(1), 6)
    assert rank0 != rank1
    assert lengths(loader(0), 6) == rank0
    assert lengths(loader(0, seed=1), 6) != rank0


def test_resume_and_worker_count_do_not_change_the_stream():
    reference = lengths(loader(1), 5)
    first = loader(1)
    lengths(first, 2)
    resumed = loader(1)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert lengths(resumed, 3) == reference[2:]
    assert lengths(loader(1, num_workers=2), 5) == reference


def test_lengths_are_uniform_over_one_to_n_minus_one():
    transform, batch = RandomPrefixLengths(NUM_PATCHES), {"sample_id": torch.arange(8000)}
    draws = transform(batch, torch.Generator().manual_seed(0))["prefix_lengths"]
    counts = torch.bincount(draws, minlength=NUM_PATCHES)
    assert counts[0] == 0 and counts[NUM_PATCHES:].sum() == 0
    expected = len(draws) / (NUM_PATCHES - 1)
    assert ((counts[1:] - expected).abs() < 0.2 * expected).all()


def test_fixed_lengths_and_bad_ranges():
    batch = FixedPrefixLengths(3)({"sample_id": torch.arange(5)}, torch.Generator())
    assert batch["prefix_lengths"].tolist() == [3] * 5 and batch["prefix_lengths"].dtype == torch.int64
    with pytest.raises(ValueError, match="min_length"):
        RandomPrefixLengths(4, min_length=3, max_length=2)
    with pytest.raises(ValueError, match="length"):
        FixedPrefixLengths(-1)
