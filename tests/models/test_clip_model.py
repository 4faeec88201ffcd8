"""The CLIP towers' own rules: end-of-text pooling, position-table sizes, declared keys, the logit scale's clamp and the
analytic training FLOPs. (Equality with Hugging Face's CLIPModel: test_hf_clip.py.)"""

import math
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from polymodal.models.clip import LogitScale, build_clip, end_of_text_positions, tower_train_flops
from polymodal.models.meta import call_block, checking_keys
from polymodal.objectives.contrastive import CLIPContrastiveLoss


def tiny_clip():
    return build_clip(
        8, vision=dict(image_size=8, patch_size=4, dim=16, depth=1, num_heads=2), text=dict(vocab_size=20,
        context_length=6, dim=16, depth=1, num_heads=2),
    )  # fmt: skip


def test_end_of_text_rules():
    ids = torch.tensor([[5, 9, 3, 0, 0], [5, 7, 9, 9, 0]])
    assert end_of_text_positions(ids, None).tolist() == [1, 2]  # the largest id (first of ties)
    assert end_of_text_positions(ids, 9).tolist() == [1, 2]
    assert end_of_text_positions(torch.tensor([[5, 3, 9], [9, 9, 9]]), 9).tolist() == [2, 0]
    with pytest.raises(ValueError, match="rows \\[0\\] hold no end-of-text token 7"):
        end_of_text_positions(ids, 7)


def test_build_clip_checks_its_inputs():
    model = tiny_clip()
    assert model.read_keys == ("image", "text_ids") and model.write_keys[-1] == "logit_scale"
    assert model({"image": torch.randn(2, 3, 8, 8), "text_ids": torch.tensor([[1, 19, 0], [3, 4, 19]])})[
        "logit_scale"
    ].item() == pytest.approx(1 / 0.07)
    with pytest.raises(ValueError, match="exactly 5"):
        model({"image": torch.randn(2, 3, 12, 12), "text_ids": torch.tensor([[1, 19]])})
    with pytest.raises(ValueError, match="at most 6"):
        model({"image": torch.randn(1, 3, 8, 8), "text_ids": torch.ones(1, 7, dtype=torch.long)})
    with pytest.raises(ValueError, match="not divisible"):
        build_clip(8, vision=dict(image_size=10, patch_size=4, dim=16, depth=1, num_heads=2), text={})


def test_every_block_keeps_to_its_declared_keys():
    batch = {"image": torch.randn(2, 3, 8, 8), "text_ids": torch.tensor([[1, 19, 0], [3, 4, 19]])}
    with checking_keys():
        out = call_block(tiny_clip(), batch)
    assert out["image_embeds"].shape == out["text_embeds"].shape == (2, 8)
    torch.testing.assert_close(out["image_embeds"].norm(dim=-1), torch.ones(2))


def test_logit_scale_is_clamped_at_100_without_touching_the_parameter():
    scale = LogitScale()
    assert scale({})["logit_scale"].item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        scale.log_scale.fill_(6.0)
    value = scale({})["logit_scale"]
    value.backward()
    assert value.item() == pytest.approx(100.0) and scale.log_scale.item() == 6.0 and scale.log_scale.grad == 0
    assert not LogitScale(learnable=False).log_scale.requires_grad
    assert LogitScale(init_temperature=0.5)({})["logit_scale"].item() == pytest.approx(2.0)
    assert math.isclose(tiny_clip().models["logit_scale"].log_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with pytest.raises(ValueError, match="init_temperature"):
        LogitScale(init_temperature=0.0)


def test_text_tower_pools_at_given_end_of_text_positions():
    """The data's caption_eot positions pool the same hidden states as finding the end token (id 19) in the ids."""
    ids = torch.tensor([[2, 5, 19, 0, 0], [2, 7, 8, 9, 19]])
    text = dict(vocab_size=20, context_length=6, dim=16, depth=1, num_heads=2)
    vision = dict(image_size=8, patch_size=4, dim=16, depth=1, num_heads=2)
    torch.manual_seed(0)
    by_token = build_clip(8, vision=vision, text=text | {"eot_token_id": 19})
    by_position = build_clip(8, vision=vision, text=text | {"ids_key": "caption_ids", "eot_key": "caption_eot"})
    by_position.load_state_dict(by_token.state_dict())
    expected = by_token({"text_ids": ids}, only="text_tower")["text_embeds"]
    with checking_keys():
        got = call_block(by_position, {"caption_ids": ids, "caption_eot": torch.tensor([2, 4])}, only="text_tower")
    torch.testing.assert_close(got["text_embeds"], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="must be \\[B\\]=2 positions"):
        by_position({"caption_ids": ids, "caption_eot": torch.tensor([2])}, only="text_tower")
    with pytest.raises(ValueError, match="eot_key"):
        build_clip(8, vision=vision, text=text | {"eot_token_id": 19, "eot_key": "caption_eot"})


def test_pixel_standardisation_equals_a_tower_fed_standardised_pixels():
    vision = dict(image_size=8, patch_size=4, dim=16, depth=1, num_heads=2)
    text = dict(vocab_size=20, context_length=6, dim=16, depth=1, num_heads=2)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    plain = build_clip(8, vision=vision, text=text)
    standardising = build_clip(8, vision=vision | {"pixel_mean": mean, "pixel_std": std}, text=text)
    # the standardising block comes first: every image preprocessor block is one further on
    one_further = lambda match: f"{match[1]}{int(match[2]) + 1}"  # noqa: E731
    shifted = {
        re.sub(r"(image_tower\.preprocessor\.blocks\.)(\d+)", one_further, name): tensor
        for name, tensor in plain.state_dict().items()
    }
    standardising.load_state_dict(shifted)
    pixels = torch.rand(2, 3, 8, 8)
    standardised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    expected = plain({"image": standardised}, only="image_tower")["image_embeds"]
    torch.testing.assert_close(standardising({"image": pixels}, only="image_tower")["image_embeds"], expected)
    with pytest.raises(ValueError, match="both pixel_mean and pixel_std"):
        build_clip(8, vision=vision | {"pixel_mean": mean}, text=text)


def counted_flops(model, batch, only=None, backward=False) -> int:
    """FlopCounterMode's count of a forward (and backward) pass; the math SDPA backend runs attention as matmuls the
    counter sees (it does not count the CPU fused kernel)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(dict(batch), only=only)
        if backward:
            CLIPContrastiveLoss()(out)[0].backward()
    return counter.get_total_flops()


def test_train_flops_match_the_flop_counter_on_each_tower_and_a_training_step():
    torch.manual_seed(0)
    model = build_clip(
        16, vision=dict(image_size=32, patch_size=4, dim=32, depth=2, num_heads=2, pixel_mean=[0.5] * 3,
        pixel_std=[0.25] * 3), text=dict(vocab_size=50, context_length=48, dim=32, depth=2, num_heads=2),
    )  # fmt: skip
    batch = {"image": torch.rand(3, 3, 32, 32), "text_ids": torch.randint(0, 50, (3, 40))}
    image_flops = tower_train_flops(model.models["image_tower"], 3, 64, 65)  # 64 patches, then the class token
    text_flops = tower_train_flops(model.models["text_tower"], 3, 40, 40)
    assert model.train_flops(batch) == image_flops + text_flops
    assert 2 * 12 * 32 * 65 * 65 * 3 > 0.2 * image_flops  # attention (12·L·d·T per token) is a real share
    assert image_flops == pytest.approx(3 * counted_flops(model, batch, "image_tower"), rel=1e-6)
    assert text_flops == pytest.approx(3 * counted_flops(model, batch, "text_tower"), rel=1e-6)
    # a real step: the patch projection computes no input gradient, the loss adds its B x B logits
    assert model.train_flops(batch) == pytest.approx(counted_flops(model, batch, backward=True), rel=0.02)
