"""NegCLIP's hard negative captions as a batch transform: each caption again with one group word swapped for another
of its group (uniformly), appended as extra rows; captions without a group word are marked invalid; the draws
follow the generator; words that are not one token are refused. Both tokenizer kinds: 4M's WordPiece and our
byte-level BPE (whose words after a space are other tokens)."""

import pytest
import torch

from polymodal.data.multimodal.hard_negatives import SwappedWordNegatives
from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.tokenizers.text.bpe import min_vocab_size, save_tokenizer, train_bpe
from polymodal.tokenizers.text.captions import CaptionEncoder
from polymodal.tokenizers.text.wordpiece import train_wordpiece

CAPTIONS = [
    "two objects on a checkered floor: a large red cube and a small blue cone",
    "a large green sphere",
    "an empty checkered floor",
    "from left to right, a small grey cylinder",
]


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tokenizer_path(request, tmp_path_factory) -> str:
    texts = synthetic_scene_texts(50)
    tokenizer = (
        train_wordpiece(texts, 4400) if request.param == "wordpiece" else train_bpe(texts, min_vocab_size() + 400)
    )
    return str(save_tokenizer(tokenizer, tmp_path_factory.mktemp(request.param) / "tokenizer.json"))


def caption_batch(path: str, captions: list[str]) -> dict:
    encoded = CaptionEncoder.from_file(path, 24)(captions)
    return {"sample_id": torch.arange(len(captions)), **{f"caption_{key}": value for key, value in encoded.items()}}


def token_words(path: str, ids: torch.Tensor) -> list[list[str]]:
    """Each row's tokens as words (byte-level BPE's leading-space mark dropped)."""
    tokenizer = CaptionEncoder.from_file(path, 24).tokenizer
    return [[tokenizer.id_to_token(token).removeprefix("Ġ") for token in row.tolist()] for row in ids]


def test_each_caption_gets_one_shape_swapped_and_a_caption_without_shapes_none(tokenizer_path):
    batch = caption_batch(tokenizer_path, CAPTIONS)
    out = SwappedWordNegatives(tokenizer_path, [list(SHAPES)])(batch, torch.Generator().manual_seed(0))
    ids, negatives = out["caption_ids"].chunk(2)
    assert torch.equal(ids, batch["caption_ids"])
    assert torch.equal(out["caption_eot"], batch["caption_eot"].repeat(2))
    assert torch.equal(out["caption_mask"], batch["caption_mask"].repeat(2, 1))
    assert out["hard_negative_valid"].tolist() == [True, True, False, True]
    for caption, negative in zip(token_words(tokenizer_path, ids), token_words(tokenizer_path, negatives), strict=True):
        swapped = [(old, new) for old, new in zip(caption, negative, strict=True) if old != new]
        if not any(word in SHAPES for word in caption):
            assert swapped == []
            continue
        ((old, new),) = swapped  # one token: the caption keeps its length and end position
        assert old in SHAPES and new in SHAPES


def test_the_swap_is_uniform_over_positions_and_other_words(tokenizer_path):
    batch = caption_batch(tokenizer_path, [CAPTIONS[0]] * 6000)
    out = SwappedWordNegatives(tokenizer_path, [list(SHAPES)])(batch, torch.Generator().manual_seed(1))
    caption = token_words(tokenizer_path, batch["caption_ids"][:1])[0]
    outcomes: dict[tuple, int] = {}
    for negative in token_words(tokenizer_path, out["caption_ids"][6000:]):
        swap = next((index, new) for index, (old, new) in enumerate(zip(caption, negative, strict=True)) if old != new)
        outcomes[swap] = outcomes.get(swap, 0) + 1
    assert len(outcomes) == 6  # cube -> 3 other shapes, cone -> 3 other shapes
    assert all(abs(count - 1000) < 150 for count in outcomes.values())


def test_the_draws_follow_the_generator(tokenizer_path):
    batch = caption_batch(tokenizer_path, CAPTIONS * 16)
    transform = SwappedWordNegatives(tokenizer_path, [list(SHAPES)])
    first = transform(batch, torch.Generator().manual_seed(3))["caption_ids"]
    assert torch.equal(transform(batch, torch.Generator().manual_seed(3))["caption_ids"], first)
    assert not torch.equal(transform(batch, torch.Generator().manual_seed(4))["caption_ids"], first)


def test_groups_swap_within_themselves(tokenizer_path):
    batch = caption_batch(tokenizer_path, ["a large red sphere"] * 200)
    groups = [list(SHAPES), ["red", "green", "blue"]]
    out = SwappedWordNegatives(tokenizer_path, groups)(batch, torch.Generator().manual_seed(0))
    words = {
        " ".join(word for word in row if word.isalpha())
        for row in token_words(tokenizer_path, out["caption_ids"][200:])
    }
    expected = {f"a large {colour} sphere" for colour in ("green", "blue")}
    expected |= {f"a large red {shape}" for shape in SHAPES if shape != "sphere"}
    assert words == expected


def test_bad_groups_are_clear_errors(tokenizer_path):
    with pytest.raises(ValueError, match="not one token"):
        SwappedWordNegatives(tokenizer_path, [["cube", "dodecahedronic"]])
    with pytest.raises(ValueError, match="at least two distinct words"):
        SwappedWordNegatives(tokenizer_path, [["cube"]])
    with pytest.raises(ValueError, match="share a token"):
        SwappedWordNegatives(tokenizer_path, [["cube", "cone"], ["cone", "sphere"]])
