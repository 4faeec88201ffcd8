from functools import partial

import numpy as np
import pytest
import torch

from polymodal.data.multimodal.collate import collate_with_absent
from polymodal.data.multimodal.loader import ResumableLoader
from polymodal.data.multimodal.mixing import MixedDataset


class ListDataset:
    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, sample_id: int) -> dict:
        return self.samples[sample_id]


def scenes(count: int) -> ListDataset:
    return ListDataset(
        [
            {"rgb": torch.full((3, 4, 4), i, dtype=torch.uint8), "caption": [f"scene {i}"], "index": i}
            for i in range(count)
        ]
    )


def depths(count: int) -> ListDataset:
    return ListDataset([{"depth": torch.full((1, 4, 4), float(i)), "index": i} for i in range(count)])


def test_weights_are_respected_over_many_draws():
    mixed = MixedDataset(
        {"a": scenes(7), "b": depths(5), "c": depths(3)}, {"a": 6.0, "b": 3.0, "c": 1.0}, seed=1, num_samples=20000
    )
    names = [mixed.locate(j)[0] for j in range(len(mixed))]
    fractions = {name: names.count(name) / len(names) for name in "abc"}
    assert fractions == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1}, abs=0.015)


def test_sources_are_covered_without_repeats_before_wrapping():
    source = depths(5)
    mixed = MixedDataset({"a": scenes(4), "b": source}, {"a": 1.0, "b": 1.0}, seed=3, num_samples=40)
    from_b = [mixed.locate(j)[1] for j in range(len(mixed)) if mixed.locate(j)[0] == "b"]
    assert len(from_b) >= 10
    assert sorted(from_b[:5]) == list(range(5)) and sorted(from_b[5:10]) == list(range(5))


def test_mixing_is_deterministic_and_tags_the_source():
    def build(seed):
        return MixedDataset({"a": scenes(6), "b": depths(6)}, {"a": 1.0, "b": 2.0}, seed=seed)

    first, again, other = build(4), build(4), build(5)
    assert [first.locate(j) for j in range(12)] == [again.locate(j) for j in range(12)]
    assert [first.locate(j) for j in range(12)] != [other.locate(j) for j in range(12)]
    for j in range(12):
        name, index = first.locate(j)
        sample = first[j]
        assert sample["source"] == name and sample["index"] == index
        assert ("rgb" in sample) == (name == "a")
    assert len(first) == 12
    with pytest.raises(IndexError, match="out of range"):
        first[12]


def test_collate_fills_absent_modalities_with_zeros_and_masks():
    samples = [scenes(2)[1], depths(3)[2], scenes(1)[0]]
    batch = collate_with_absent(samples, ["rgb", "depth", "caption", "det"])
    assert batch["rgb"].shape == (3, 3, 4, 4) and batch["rgb"].dtype == torch.uint8
    assert torch.equal(batch["rgb"][0], samples[0]["rgb"]) and not batch["rgb"][1].any()
    assert batch["rgb_present"].tolist() == [True, False, True]
    assert batch["depth"].shape == (3, 1, 4, 4) and batch["depth"].dtype == torch.float32
    assert torch.equal(batch["depth"][1], samples[1]["depth"]) and not batch["depth"][[0, 2]].any()
    assert batch["depth_present"].tolist() == [False, True, False]
    assert batch["caption"] == [["scene 1"], None, ["scene 0"]]
    assert batch["det"] == [None, None, None] and not batch["det_present"].any()
    assert batch["index"].tolist() == [1, 2, 0] and batch["index"].dtype == torch.int64


def test_collate_uses_declared_spec_when_no_sample_has_the_modality():
    spec = {"normal": ((3, 4, 4), torch.float32)}
    batch = collate_with_absent([depths(1)[0], depths(2)[1]], ["depth", "normal"], spec)
    assert batch["normal"].shape == (2, 3, 4, 4) and batch["normal"].dtype == torch.float32
    assert not batch["normal"].any() and not batch["normal_present"].any()
    det = {"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int64)}
    dets = collate_with_absent([{"det": det}, {}], ["det"])
    assert dets["det"] == [det, None] and dets["det_present"].tolist() == [True, False]


def test_collate_rejects_inconsistent_batches():
    with pytest.raises(ValueError, match="'rgb'.*shapes"):
        collate_with_absent([{"rgb": torch.zeros(3, 4, 4)}, {"rgb": torch.zeros(3, 8, 8)}], ["rgb"])
    with pytest.raises(ValueError, match="'index' is missing from samples \\[1\\]"):
        collate_with_absent([{"index": 1}, {}], [])
    with pytest.raises(ValueError, match="'extra'"):
        collate_with_absent([{}, {"extra": 1}], [])
    with pytest.raises(ValueError, match="no samples"):
        collate_with_absent([], ["rgb"])


def test_bad_mixing_arguments_are_rejected():
    with pytest.raises(ValueError, match="weights name"):
        MixedDataset({"a": scenes(2)}, {"b": 1.0}, seed=0)
    with pytest.raises(ValueError, match="'a' must be finite"):
        MixedDataset({"a": scenes(2)}, {"a": -1.0}, seed=0)
    with pytest.raises(ValueError, match="all be zero"):
        MixedDataset({"a": scenes(2)}, {"a": 0.0}, seed=0)
    with pytest.raises(ValueError, match="'b' has weight"):
        MixedDataset({"a": scenes(2), "b": ListDataset([])}, {"a": 1.0, "b": 1.0}, seed=0)


def test_mixed_batches_flow_through_the_resumable_loader():
    mixed = MixedDataset({"a": scenes(6), "b": depths(6)}, {"a": 1.0, "b": 1.0}, seed=0)
    collate = partial(collate_with_absent, modalities=["rgb", "depth", "caption"])
    loader = ResumableLoader(mixed, batch_size=4, seed=2, num_workers=2, collate=collate)
    for _ in range(4):
        batch = next(loader)
        names = [mixed.locate(j)[0] for j in batch["sample_id"].tolist()]
        assert batch["source"] == names
        assert batch["rgb_present"].tolist() == [n == "a" for n in names]
        assert batch["depth"].shape == (4, 1, 4, 4)
        assert np.array_equal(batch["index"].numpy(), [mixed.locate(j)[1] for j in batch["sample_id"].tolist()])
