import numpy as np
import pytest

from polymodal.families.lumina.vocabulary import VocabularyLayout, image_block, image_block_length, parse_image_block
from polymodal.tokenizers.text.bpe import SPECIAL_TOKENS


def test_ids_follow_the_special_token_contract():
    layout = VocabularyLayout(text_vocab_size=1000, codebook_size=256)
    named = {
        "<|pad|>": layout.pad,
        "<|bos|>": layout.bos,
        "<|eot|>": layout.end_of_turn,
        "<|image|>": layout.image_placeholder,
        "<|boi|>": layout.begin_image,
        "<|eoi|>": layout.end_image,
        "<|eor|>": layout.end_row,
        "<|h_1|>": layout.height_token(1),
        "<|h_128|>": layout.height_token(128),
        "<|w_1|>": layout.width_token(1),
        "<|w_128|>": layout.width_token(128),
    }
    assert {name: SPECIAL_TOKENS.index(name) for name in named} == named
    assert layout.image_offset == 1000 and layout.vocab_size == 1256
    with pytest.raises(ValueError, match="no size token"):
        layout.height_token(129)


def test_size_tokens_reach_2048_pixels_at_16x():
    """Lumina's largest bucket at target 1024 is 2048 x 512 pixels: 128 x 32 codes of a 16x tokenizer."""
    layout = VocabularyLayout(text_vocab_size=65536 - 8192, codebook_size=8192)
    assert layout.height_token(2048 // 16) - layout.first_height == 127
    assert layout.token_dtype == np.uint16
    assert VocabularyLayout(text_vocab_size=65536, codebook_size=1).token_dtype == np.uint32


def test_image_block_layout_and_round_trip():
    layout = VocabularyLayout(text_vocab_size=500, codebook_size=16)
    codes = np.arange(6).reshape(2, 3)
    block = image_block(codes, layout)
    eor = layout.end_row
    expected = [layout.begin_image, layout.height_token(2), layout.width_token(3), 500, 501, 502, eor, 503, 504, 505]
    assert block.tolist() == [*expected, eor, layout.end_image]
    assert len(block) == image_block_length(2, 3) == 4 + 2 * 4
    np.testing.assert_array_equal(parse_image_block(block, layout), codes)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "starts with"),
        (lambda b: np.concatenate([b[:3], b[4:]]), "tokens, got"),
        (lambda b: np.where(np.arange(len(b)) == 6, 500, b), "must end with"),
        (lambda b: np.where(np.arange(len(b)) == 3, 7, b), "only hold image codes"),
    ],
)
def test_malformed_blocks_are_refused(damage, message):
    layout = VocabularyLayout(text_vocab_size=500, codebook_size=16)
    with pytest.raises(ValueError, match=message):
        parse_image_block(damage(image_block(np.zeros((2, 3), dtype=np.int64), layout)), layout)


def test_layout_round_trips_through_its_dict_and_names_differences():
    layout = VocabularyLayout(text_vocab_size=800, codebook_size=64)
    assert VocabularyLayout.from_dict(layout.to_dict()) == layout
    other = VocabularyLayout(text_vocab_size=900, codebook_size=64)
    assert "text_vocab_size 800 != 900" in layout.describe_difference(other)
    assert layout.fingerprint() != other.fingerprint()
    with pytest.raises(ValueError, match="inconsistent"):
        VocabularyLayout.from_dict({**layout.to_dict(), "vocab_size": 1})
