"""Shape twins through MultimodalData: the twin gets its scene's crop and caption phrasing, and FoldTwins makes the
batch's rows B..2B-1 the twins' pairs."""

import pytest
import torch

from polymodal.data.multimodal.data_module import MultimodalData
from polymodal.data.multimodal.twins import FoldTwins
from polymodal.data.synth.twins import render_scene_with_twin
from polymodal.data.synth.writers import write_shards
from polymodal.tokenizers.text.bpe import min_vocab_size, save_tokenizer, train_bpe

SEED, SCENES, BATCH, LENGTH = 6, 8, 4, 40


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    write_shards(
        root, SCENES, SCENES, seed=SEED, modalities=("rgb", "caption", "shape_label", "twin_rgb", "twin_caption")
    )
    write_shards(tmp_path_factory.mktemp("plain"), SCENES, SCENES, seed=SEED, modalities=("rgb", "caption"))
    samples = [render_scene_with_twin(SEED, i) for i in range(SCENES)]
    texts = [text for sample in samples for text in sample["caption"] + sample["twin_caption"]]
    tokenizer = save_tokenizer(train_bpe(texts, min_vocab_size() + 300), root / "captions.json")
    return {"root": root, "samples": samples, "tokenizer": str(tokenizer)}


def make(scenes, cache, batch_transform=None, modalities=("rgb", "caption", "shape_label", "twin_rgb", "twin_caption")):
    location = f"{scenes['root']}/[{','.join(modalities)}]/shard-00000.tar"
    return MultimodalData(
        train=location,
        val=location,
        modalities=list(modalities),
        image_size=32,
        batch_size=BATCH,
        cache_dir=str(cache),
        scale=(0.3, 1.0),
        hflip=0.5,
        caption_tokenizer=scenes["tokenizer"],
        caption_tokens=LENGTH,
        batch_transform=batch_transform,
        seed=1,
    )


def test_a_twin_gets_its_scenes_crop_and_the_same_caption_phrasing(scenes, tmp_path):
    batch = next(make(scenes, tmp_path).train)
    assert batch["twin_rgb"].shape == batch["rgb"].shape == (BATCH, 3, 32, 32)
    assert batch["twin_rgb"].dtype == torch.float32 and batch["twin_rgb_present"].all()
    for row, sample_id in enumerate(batch["sample_id"].tolist()):
        sample = scenes["samples"][sample_id]
        phrasing = sample["caption"].index(batch["caption"][row])
        assert batch["twin_caption"][row] == sample["twin_caption"][phrasing]
        # the same crop: where the scene and its twin agree at full size, the cropped pair agrees too
        same = (sample["rgb"] == sample["twin_rgb"]).all(0)
        assert same.float().mean() > 0.9
        differs = (batch["rgb"][row] - batch["twin_rgb"][row]).abs().amax(0) > 1e-6
        assert 0 < differs.float().mean() < 0.5
    assert not torch.equal(batch["caption_ids"], batch["twin_caption_ids"])
    assert batch["twin_caption_eot"].shape == (BATCH,)


def test_fold_twins_appends_the_twins_as_pairs_of_their_own(scenes, tmp_path):
    plain, folded = next(make(scenes, tmp_path).train), next(make(scenes, tmp_path, FoldTwins()).train)
    assert torch.equal(folded["rgb"], torch.cat([plain["rgb"], plain["twin_rgb"]]))
    for key in ("caption_ids", "caption_mask", "caption_eot", "rgb_present"):
        assert torch.equal(folded[key], torch.cat([plain[key], plain[f"twin_{key}"]]))
    assert folded["caption"] == plain["caption"] + plain["twin_caption"]
    assert torch.equal(folded["sample_id"], plain["sample_id"].repeat(2))
    assert "shape_label" not in folded and not any(key.startswith("twin_") for key in folded)


def test_validation_batches_without_twins_pass_unfolded_and_a_partial_batch_is_an_error(scenes, tmp_path):
    fold = FoldTwins()
    plain = next(make(scenes, tmp_path).train)
    absent = {**plain, "twin_rgb_present": torch.zeros(BATCH, dtype=torch.bool)}
    absent["twin_caption_present"] = torch.zeros(BATCH, dtype=torch.bool)
    stripped = fold(absent, torch.Generator())
    assert torch.equal(stripped["rgb"], plain["rgb"]) and "shape_label" in stripped
    assert not any(key.startswith("twin_") for key in stripped)
    partial = {**plain, "twin_rgb_present": torch.tensor([True, False, True, True])}
    with pytest.raises(ValueError, match="no shape twin"):
        fold(partial, torch.Generator())


def test_a_twin_caption_list_of_another_length_is_a_skipped_sample(scenes, tmp_path):
    from polymodal.data.multimodal.captions import pick_text_pair
    from polymodal.data.multimodal.skips import SampleError

    with pytest.raises(SampleError, match="as many texts"):
        pick_text_pair(["a", "b"], ["a"], torch.Generator(), train=True)


def test_the_largest_batch_of_a_twins_config_is_folded_like_the_real_one(scenes, tmp_path):
    real = next(make(scenes, tmp_path, FoldTwins()).train)
    modalities = ["rgb", "caption", "shape_label", "twin_rgb", "twin_caption"]
    largest = MultimodalData.largest_batch(
        modalities, 32, BATCH, scenes["tokenizer"], LENGTH, batch_transform=FoldTwins()
    ).batch
    tensors = {key for key, value in real.items() if isinstance(value, torch.Tensor)}
    assert tensors <= set(largest)
    for key in tensors:
        assert largest[key].shape == real[key].shape and largest[key].dtype == real[key].dtype, key
