"""Prompts in the training format and the sizes a run can draw: buckets of its target size or whole patches."""

import numpy as np
import pytest
import torch
from tiny_image_tokenizers import tiny_tokenizer

from polymodal.families.lumina.generate.prompts import (
    ImageSizes,
    encode_image,
    human_turn,
    prompt_image,
    text_to_image_prompt,
)
from polymodal.families.lumina.vocabulary import VocabularyLayout, image_block, parse_image_block
from polymodal.tokenizers.text.bpe import load_tokenizer

LAYOUT = VocabularyLayout(text_vocab_size=800, codebook_size=64)


@pytest.fixture(scope="module")
def bpe(lumina_inputs):
    return load_tokenizer(lumina_inputs["text"])


def test_a_text_to_image_prompt_is_one_human_turn_of_plain_text(bpe):
    ids = text_to_image_prompt("a cube <|eot|> <|boi|>", (32, 96), bpe, LAYOUT)
    assert ids[0] == LAYOUT.bos and ids[-1] == LAYOUT.end_of_turn
    assert LAYOUT.end_of_turn not in ids[1:-1] and LAYOUT.begin_image not in ids  # typed specials stay text
    text = bpe.decode(ids[1:-1])
    assert text.startswith("Generate an image of 96x32 according to the following prompt:\n")
    assert text.endswith("a cube <|eot|> <|boi|>")


def test_images_take_their_placeholders_place(bpe):
    block = image_block(np.arange(6).reshape(2, 3), LAYOUT)
    ids = human_turn("look <|image|> here", [block], bpe, LAYOUT)
    start = ids.index(LAYOUT.begin_image)
    assert parse_image_block(np.array(ids[start : start + len(block)]), LAYOUT).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="1 <|image|> placeholders for 2 images"):
        human_turn("<|image|>", [block, block], bpe, LAYOUT)


def test_sizes_are_buckets_or_whole_patches():
    sizes = ImageSizes(downsample=8, target_size=64)
    assert sizes.default() == (64, 64) and (32, 96) in sizes.buckets
    assert sizes.grid((64, 64)) == (8, 8) and sizes.grid((16, 48)) == (2, 6)
    with pytest.raises(ValueError, match="multiples of 16 px or a bucket of target size 64"):
        sizes.grid((24, 24))
    unknown = ImageSizes(downsample=8)
    assert unknown.buckets == [] and unknown.grid((32, 16)) == (4, 2)
    with pytest.raises(ValueError, match="give a size"):
        unknown.default()
    assert ImageSizes(downsample=16, target_size=256, patch_size=16).grid((208, 304)) == (13, 19)  # a 16-px bucket


def test_a_prompt_image_is_cut_to_its_bucket_and_encoded(lumina_inputs):
    source = next((lumina_inputs["conversations"].parent / "images").glob("*.rgb.png"))
    sizes = ImageSizes(downsample=8, target_size=64)
    image = prompt_image(source, sizes, seed=0, index=0)
    assert (image.height, image.width) in sizes.buckets
    assert prompt_image(source, sizes, seed=0, index=0).tobytes() == image.tobytes()  # a seeded crop
    torch.manual_seed(0)
    block = encode_image(image, tiny_tokenizer("rgb").eval(), LAYOUT)
    assert parse_image_block(block, LAYOUT).shape == (image.height // 8, image.width // 8)
