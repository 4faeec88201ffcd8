"""The family's sampler on a tiny random Chameleon: every image block it draws parses, whatever the model prefers;
guidance in one batch is the two branches computed apart; rows come out as if alone; text stays text."""

import numpy as np
import pytest
import torch
from torch import nn

from polymodal.families.lumina.generate.sampler import (
    FIRST_TEXT_ID,
    GuidedDecoder,
    ImageTextSampler,
    classifier_free_guidance,
    image_turn,
)
from polymodal.families.lumina.generate.settings import SamplingSettings
from polymodal.families.lumina.model import build_chameleon
from polymodal.families.lumina.vocabulary import VocabularyLayout, parse_image_block
from polymodal.models.decoding import IncrementalDecoder

LAYOUT = VocabularyLayout(text_vocab_size=320, codebook_size=24)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_chameleon(LAYOUT.vocab_size, dim=32, depth=2, num_heads=4, num_kv_heads=2, ffn_dim=64).eval()


class Biased(nn.Module):
    """A model whose logits are pushed by ``bias`` (``[V]``): what it would draw without the sampler's rules."""

    def __init__(self, model: nn.Module, bias: torch.Tensor) -> None:
        super().__init__()
        self.model, self.bias = model, bias

    def forward(self, batch):
        out = self.model(batch)
        out["logits"] = out["logits"] + self.bias
        return out


def prompts(count: int, seed: int) -> list[list[int]]:
    """Human turns of random text of different lengths."""
    rng = np.random.default_rng(seed)
    texts = [rng.integers(FIRST_TEXT_ID, LAYOUT.text_vocab_size, rng.integers(1, 12)).tolist() for _ in range(count)]
    return [[LAYOUT.bos, *text, LAYOUT.end_of_turn] for text in texts]


def check_turns(turns: torch.Tensor, rows: int, columns: int) -> None:
    assert turns.shape[1] == 5 + rows * (columns + 1)
    for turn in turns.numpy():
        assert parse_image_block(turn[:-1], LAYOUT).shape == (rows, columns)
        assert turn[-1] == LAYOUT.end_of_turn


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_every_drawn_image_block_parses(model, cfg_scale):
    settings = SamplingSettings(temperature=1.5, image_top_k=0, cfg_scale=cfg_scale)
    sampler = ImageTextSampler(model, LAYOUT, settings)
    generator = torch.Generator().manual_seed(0)
    for index, (rows, columns) in enumerate([(1, 1), (2, 3), (3, 2), (4, 4), (1, 5)] * 2):
        check_turns(sampler.images(prompts(3, index), rows, columns, generator), rows, columns)


def test_structure_forcing_holds_against_a_model_that_prefers_every_other_token(model):
    bias = torch.full((LAYOUT.vocab_size,), 30.0)
    bias[LAYOUT.image_offset :] = 0.0  # everything but the codes is far likelier
    settings = SamplingSettings(temperature=3.0, image_top_k=5, top_p=0.9, cfg_scale=2.0)
    sampler = ImageTextSampler(Biased(model, bias), LAYOUT, settings)
    turns = sampler.images(prompts(4, 1), 3, 4, torch.Generator().manual_seed(1))
    check_turns(turns, 3, 4)
    _, is_code = image_turn(3, 4, LAYOUT)
    assert LAYOUT.is_image_code(turns[:, is_code].numpy()).all()


def test_image_top_k_keeps_the_likeliest_codes(model):
    bias = torch.zeros(LAYOUT.vocab_size)
    bias[LAYOUT.image_offset + 7] = bias[LAYOUT.image_offset + 11] = 40.0
    sampler = ImageTextSampler(Biased(model, bias), LAYOUT, SamplingSettings(image_top_k=2, cfg_scale=1.0))
    turns = sampler.images(prompts(2, 2), 2, 2, torch.Generator().manual_seed(2))
    codes = np.stack([parse_image_block(turn[:-1], LAYOUT) for turn in turns.numpy()])
    assert set(codes.ravel().tolist()) <= {7, 11}


@torch.no_grad()
def test_guidance_in_one_batch_equals_the_two_branches_decoded_apart(model):
    cond = [torch.tensor(p) for p in prompts(3, 3)]
    head = torch.tensor(image_turn(2, 2, LAYOUT)[0][:3])
    cond = [torch.cat([p, head]) for p in cond]
    uncond = [head] * 3
    together = GuidedDecoder(model, 3.0)
    apart_cond, apart_uncond = IncrementalDecoder(model), IncrementalDecoder(model)
    mixed = together.prefill(cond, uncond, room=6)
    reference = classifier_free_guidance(apart_cond.prefill(cond, 6), apart_uncond.prefill(uncond, 6), 3.0)
    torch.testing.assert_close(mixed, reference, atol=1e-5, rtol=0)
    for tokens in (torch.tensor([[330], [331], [332]]), torch.tensor([[333, LAYOUT.end_row]] * 3)):
        mixed = together.extend(tokens)
        reference = classifier_free_guidance(apart_cond.extend(tokens), apart_uncond.extend(tokens), 3.0)
        torch.testing.assert_close(mixed, reference, atol=1e-5, rtol=0)


def test_the_unconditional_rows_are_the_image_without_the_prompt(model):
    batches = []
    hook = model.preprocessor.blocks[0].register_forward_pre_hook(lambda _, inputs: batches.append(dict(inputs[0])))
    try:
        sampler = ImageTextSampler(model, LAYOUT, SamplingSettings(cfg_scale=2.0))
        turns = sampler.images(prompts(2, 4), 2, 2, torch.Generator().manual_seed(4))
    finally:
        hook.remove()
    prefill = batches[0]
    assert prefill["input_ids"].shape[0] == 4
    for row in (2, 3):
        real = prefill["document_ids"][row] == 0
        assert prefill["input_ids"][row][real].tolist() == turns[row - 2, :3].tolist()  # <|boi|> <|h_2|> <|w_2|>
    for later in batches[1:]:  # both halves are fed the same tokens
        assert torch.equal(later["input_ids"][:2], later["input_ids"][2:])


def test_a_row_comes_out_as_if_drawn_alone(model):
    sampler = ImageTextSampler(model, LAYOUT, SamplingSettings(temperature=0.0, cfg_scale=2.5))
    rows = prompts(3, 5)
    together = sampler.images(rows, 3, 3, torch.Generator())
    for index, prompt in enumerate(rows):
        assert torch.equal(together[index], sampler.images([prompt], 3, 3, torch.Generator())[0])


def test_the_generator_makes_draws_repeatable(model):
    sampler = ImageTextSampler(model, LAYOUT, SamplingSettings(image_top_k=0))
    draws = [sampler.images(prompts(2, 6), 3, 3, torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_text_is_drawn_among_text_tokens_until_the_end_of_the_turn(model):
    bias = torch.zeros(LAYOUT.vocab_size)
    bias[:FIRST_TEXT_ID] = 30.0  # specials and
    bias[LAYOUT.image_offset :] = 30.0  # image codes far likelier than text
    bias[LAYOUT.end_of_turn] = 0.0
    sampler = ImageTextSampler(Biased(model, bias), LAYOUT, SamplingSettings(text_top_k=0), text_vocab_size=300)
    answers = sampler.text(prompts(3, 7), 20, torch.Generator().manual_seed(7))
    for answer in answers:
        body = answer[:-1] if answer[-1] == LAYOUT.end_of_turn else answer
        assert all(FIRST_TEXT_ID <= token < 300 for token in body) and 0 < len(answer) <= 20

    ending = torch.zeros(LAYOUT.vocab_size)
    ending[LAYOUT.end_of_turn] = 50.0
    sampler = ImageTextSampler(Biased(model, ending), LAYOUT)
    assert sampler.text(prompts(2, 8), 20, torch.Generator()) == [[LAYOUT.end_of_turn]] * 2


def test_settings_are_checked():
    for bad in (dict(temperature=-1), dict(image_top_k=-1), dict(top_p=1.5), dict(cfg_scale=-0.5)):
        with pytest.raises(ValueError):
            SamplingSettings(**bad)
