"""MultimodalData with a caption tokenizer trained here: one caption per sample, its tokens in the batch (ids, mask,
end position), absent captions as padding, the same batches for any worker count."""

import pytest
import torch

from polymodal.config import ConfigError, instantiate
from polymodal.data.multimodal.data_module import MultimodalData
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.synth.writers import write_shards
from polymodal.tokenizers.carried import TEXT
from polymodal.tokenizers.text.bpe import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    load_tokenizer,
    min_vocab_size,
    save_tokenizer,
    train_bpe,
)

LENGTH = 40


def pattern(root, modalities):
    return f"{root}/[{','.join(modalities)}]/shard-{{00000..00001}}.tar"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    with_captions = tmp_path_factory.mktemp("captioned")
    without = tmp_path_factory.mktemp("uncaptioned")
    write_shards(with_captions, 16, 8, seed=4, size=32, modalities=("rgb", "caption"))
    write_shards(without, 16, 8, seed=5, size=32, modalities=("rgb",))
    captioned = pattern(with_captions, ("rgb", "caption"))
    raw = MultimodalShards(captioned, cache_dir=tmp_path_factory.mktemp("index"))
    captions = {i: raw[i]["caption"] for i in range(len(raw))}
    texts = [text for sample in captions.values() for text in sample]
    tokenizer = train_bpe(texts, min_vocab_size() + 300)
    path = save_tokenizer(tokenizer, tmp_path_factory.mktemp("tokenizer") / "captions.json")
    return {"captioned": captioned, "uncaptioned": pattern(without, ("rgb",)), "captions": captions, "path": path}


def make(trees, cache, **overrides):
    args = dict(
        train=trees["captioned"],
        val=trees["captioned"],
        modalities=["rgb@16", "caption"],
        image_size=16,
        batch_size=4,
        cache_dir=str(cache),
        caption_tokenizer=str(trees["path"]),
        caption_tokens=LENGTH,
        seed=2,
    )
    return MultimodalData(**{**args, **overrides})


def check_tokens(batch, row, text, tokenizer):
    body = tokenizer.encode(text, add_special_tokens=False).ids
    assert len(body) + 2 <= LENGTH  # no truncation in this data
    expected = [BOS_ID, *body, EOS_ID] + [PAD_ID] * (LENGTH - len(body) - 2)
    assert batch["caption_ids"][row].tolist() == expected
    assert batch["caption_mask"][row].tolist() == [i < len(body) + 2 for i in range(LENGTH)]
    assert int(batch["caption_eot"][row]) == len(body) + 1


def test_training_batches_hold_the_tokens_of_one_of_each_samples_captions(trees, tmp_path):
    data = make(trees, tmp_path)
    tokenizer = load_tokenizer(trees["path"])
    picked_other_than_first = False
    for _ in range(4):
        batch = next(data.train)
        assert batch["caption_ids"].shape == (4, LENGTH) and batch["caption_ids"].dtype == torch.int64
        assert batch["caption_mask"].dtype == torch.bool and batch["caption_eot"].dtype == torch.int64
        for row, sample_id in enumerate(batch["sample_id"].tolist()):
            text = batch["caption"][row]
            assert text in trees["captions"][sample_id]
            picked_other_than_first |= text != trees["captions"][sample_id][0]
            check_tokens(batch, row, text, tokenizer)
    assert picked_other_than_first
    for batch in data.val_batches(2):  # evaluation takes the first caption
        for row, sample_id in enumerate(batch["sample_id"].tolist()):
            assert batch["caption"][row] == trees["captions"][sample_id][0]
            check_tokens(batch, row, batch["caption"][row], tokenizer)
    assert data.tokenizer_paths() == {TEXT: str(trees["path"])}


def test_caption_batches_do_not_depend_on_workers(trees, tmp_path):
    serial, workers = make(trees, tmp_path), make(trees, tmp_path, num_workers=2)
    for _ in range(5):
        want, got = next(serial.train), next(workers.train)
        assert got["caption"] == want["caption"]
        for key in ("sample_id", "caption_ids", "caption_mask", "caption_eot"):
            assert torch.equal(got[key], want[key])


def test_a_source_without_captions_gives_padding(trees, tmp_path):
    data = make(trees, tmp_path, train={"with": trees["captioned"], "without": trees["uncaptioned"]})
    sources = set()
    for _ in range(4):
        batch = next(data.train)
        for row, source in enumerate(batch["source"]):
            sources.add(source)
            assert bool(batch["caption_present"][row]) == (source == "with")
            if source == "without":
                assert batch["caption"][row] is None and not batch["caption_mask"][row].any()
                assert (batch["caption_ids"][row] == PAD_ID).all()
            else:
                assert batch["caption_mask"][row, 0] and int(batch["caption_ids"][row, 0]) == BOS_ID
    assert sources == {"with", "without"}


def test_the_largest_batch_has_caption_tokens(trees, tmp_path):
    real = next(make(trees, tmp_path).train)
    largest = MultimodalData.largest_batch(
        modalities=["rgb@16", "caption"], image_size=16, batch_size=4, caption_tokenizer="/no/such.json"
    ).batch
    shapes = {k: (v.shape, v.dtype) for k, v in real.items() if isinstance(v, torch.Tensor)}
    shapes.update({"caption_ids": ((4, 32), torch.int64), "caption_mask": ((4, 32), torch.bool)})  # default length
    assert {k: (v.shape, v.dtype) for k, v in largest.items()} == shapes


def test_bad_caption_settings_are_one_line_errors(trees, tmp_path):
    with pytest.raises(ValueError, match=r"caption_tokenizer is set but 'caption' is not in modalities \['rgb'\]"):
        make(trees, tmp_path, modalities=["rgb"])
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        make(trees, tmp_path, caption_tokenizer=str(tmp_path / "absent.json"))
    config = {
        "_target_": "polymodal.data.multimodal.data_module.MultimodalData",
        "train": trees["captioned"],
        "val": None,
        "modalities": ["rgb", "caption"],
        "image_size": 16,
        "batch_size": 2,
        "caption_tokeniser": str(trees["path"]),
    }
    with pytest.raises(
        ConfigError, match=r"unexpected keyword argument 'caption_tokeniser' — did you mean 'caption_tokenizer'\?$"
    ):
        instantiate(config, cache_dir=str(tmp_path))
