"""The whole multimodal path: synthetic shards → shard reader → aligned augmentation → resumable loader."""

from functools import partial

import pytest
import torch

from polymodal.data.multimodal import AlignedAugment, MultimodalShards, ResumableLoader, collate_with_absent
from polymodal.data.synth.labels import LABEL_MODALITIES
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.writers import write_shards

MODALITIES = ["rgb", "depth", "semseg", "normal", "det", "caption", "label"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_shards(root, num_samples=24, samples_per_shard=10, seed=3, modalities=tuple(MODALITIES))
    return f"{root}/[{','.join(MODALITIES)}]/shard-{{00000..00002}}.tar"


def loader(shards, cache, batch_size=4, dp_rank=0, dp_world=1, workers=0):
    dataset = MultimodalShards(shards, cache_dir=cache)
    augment = AlignedAugment(32, ["rgb", "depth@16", "semseg", "normal", "det"], scale=(0.3, 1.0))
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        seed=7,
        dp_rank=dp_rank,
        dp_world=dp_world,
        num_workers=workers,
        transform=augment,
        collate=partial(collate_with_absent, modalities=MODALITIES),
    )


def test_batches_are_augmented_aligned_and_independent_of_workers(shards, tmp_path):
    plain = loader(shards, tmp_path)
    threaded = loader(shards, tmp_path, workers=2)
    for _ in range(3):
        a, b = next(plain), next(threaded)
        assert torch.equal(a["sample_id"], b["sample_id"])
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["semseg"], b["semseg"])
    assert a["rgb"].shape == (4, 3, 32, 32) and a["depth"].shape == (4, 1, 16, 16) and a["semseg"].shape == (4, 32, 32)
    assert len(a["caption"]) == 4 and all(isinstance(c, list) for c in a["caption"])
    boxes = a["det"][0]["boxes"]
    assert boxes.numel() == 0 or (boxes >= 0).all() and (boxes <= 32).all()


def test_resume_on_a_different_number_of_ranks_continues_the_same_samples(shards, tmp_path):
    uninterrupted = loader(shards, tmp_path)
    expected = [next(uninterrupted) for _ in range(5)]

    first = loader(shards, tmp_path)
    for _ in range(2):
        next(first)
    state = first.state_dict()
    ranks = [loader(shards, tmp_path, batch_size=2, dp_rank=r, dp_world=2) for r in range(2)]
    for rank in ranks:
        rank.load_state_dict(state)
    for step in range(2, 5):
        parts = [next(rank) for rank in ranks]
        assert torch.equal(torch.cat([p["sample_id"] for p in parts]), expected[step]["sample_id"])
        assert torch.equal(torch.cat([p["rgb"] for p in parts]), expected[step]["rgb"])


def test_every_scene_label_reads_back_from_its_shard_modality(tmp_path):
    labels = list(LABEL_MODALITIES.values())
    write_shards(tmp_path, num_samples=5, samples_per_shard=3, seed=2, size=16, modalities=("rgb", *labels))
    dataset = MultimodalShards(f"{tmp_path}/[rgb,{','.join(labels)}]/shard-{{00000..00001}}.tar", cache_dir=tmp_path)
    assert len(dataset) == 5
    for sample_id in range(5):
        sample, rendered = dataset[sample_id], render_scene(2, sample_id, 16)
        for modality in labels:
            assert sample[modality].dtype == torch.int64 and sample[modality].ndim == 0
            assert int(sample[modality]) == int(rendered[modality]), (sample_id, modality)
