"""The CLIP towers' own rules: end-of-text pooling, position-table sizes, declared keys and the logit scale's clamp.
(Equality with Hugging Face's CLIPModel: test_hf_clip.py.)"""

import math

import pytest
import torch

from polymodal.models.clip import LogitScale, build_clip, end_of_text_positions
from polymodal.models.meta import call_block, checking_keys


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
