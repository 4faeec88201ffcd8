"""ViTPreprocessor against a plain computation: patch projection, norm, positions, CLS and registers."""

import pytest
import torch

from polymodal.models.layers.posembed import sincos_2d
from polymodal.models.vit import ViTPreprocessor


def plain_tokens(pre: ViTPreprocessor, images: torch.Tensor, patch: int, norm: bool) -> torch.Tensor:
    """Loops over the patch grid, flattening each patch (ph, pw, c), projecting, normalising, adding positions."""
    batch, channels, height, width = images.shape
    rows = []
    for b in range(batch):
        tokens = []
        for r in range(height // patch):
            for c in range(width // patch):
                block = images[b, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
                token = pre.patch_embed.weight @ block.permute(1, 2, 0).reshape(-1) + pre.patch_embed.bias
                if norm:
                    token = (token - token.mean()) / (token.var(unbiased=False) + 1e-6).sqrt()
                tokens.append(token)
        patches = torch.stack(tokens)
        if pre.pos_embed is not None:
            patches = patches + pre.pos_embed[0]
        extras = [t[0] for t in (pre.cls_token, pre.registers) if t is not None]
        rows.append(torch.cat([*extras, patches]))
    return torch.stack(rows)


@pytest.mark.parametrize(
    "pos_embed, cls_token, num_registers, patch_norm",
    [("sincos", False, 0, "layernorm"), ("learned", True, 2, None), (None, True, 0, None), ("sincos", False, 3, None)],
)
def test_tokens_match_a_plain_computation(pos_embed, cls_token, num_registers, patch_norm):
    torch.manual_seed(0)
    pre = ViTPreprocessor(
        (8, 12), 4, dim=16, pos_embed=pos_embed, cls_token=cls_token, num_registers=num_registers,
        patch_norm=patch_norm,
    )  # fmt: skip
    images = torch.randn(2, 3, 8, 12)
    data = pre({"image": images})
    extra = int(cls_token) + num_registers
    assert data["num_extra_tokens"] == extra
    assert data["tokens"].shape == (2, extra + 6, 16)
    torch.testing.assert_close(data["tokens"], plain_tokens(pre, images, 4, patch_norm is not None))


def test_sincos_positions_are_a_fixed_buffer_and_learned_ones_a_parameter():
    fixed = ViTPreprocessor(8, 4, dim=8, pos_embed="sincos")
    torch.testing.assert_close(fixed.pos_embed[0], sincos_2d(2, 2, 8))
    assert "pos_embed" not in fixed.state_dict() and "pos_embed" not in dict(fixed.named_parameters())
    learned = ViTPreprocessor(8, 4, dim=8, pos_embed="learned", cls_token=True, num_registers=1)
    assert {"pos_embed", "cls_token", "registers"} <= set(dict(learned.named_parameters()))
    assert sorted(learned.state_dict()) == ["cls_token", "patch_embed.bias", "patch_embed.weight", "pos_embed",
                                            "registers"]  # fmt: skip


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pos_embed"):
        ViTPreprocessor(8, 4, dim=8, pos_embed="rope")
    with pytest.raises(ValueError, match="not divisible"):
        ViTPreprocessor(10, 4, dim=8)
    with pytest.raises(ValueError, match="norm"):
        ViTPreprocessor(8, 4, dim=8, patch_norm="batchnorm")
    with pytest.raises(ValueError, match=r"\[B, C, 8, 8\]"):
        ViTPreprocessor(8, 4, dim=8)({"image": torch.randn(1, 3, 12, 8)})


def test_patch_norm_uses_its_epsilon():
    torch.manual_seed(0)
    pre = ViTPreprocessor(8, 4, dim=8, pos_embed=None, patch_norm="rmsnorm", patch_norm_eps=0.5)
    images = torch.randn(2, 3, 8, 8) * 0.1  # small patches, so the epsilon matters
    projected = pre.patch_embed(images)
    expected = projected / (projected.pow(2).mean(-1, keepdim=True) + 0.5).sqrt()
    torch.testing.assert_close(pre({"image": images})["tokens"], expected)


def test_pixel_statistics_standardise_the_images_before_the_projection():
    torch.manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.1]
    standardising = ViTPreprocessor(8, 4, dim=8, cls_token=True, pixel_mean=mean, pixel_std=std)
    plain = ViTPreprocessor(8, 4, dim=8, cls_token=True)
    plain.load_state_dict(standardising.state_dict())
    images = torch.rand(2, 3, 8, 8)
    by_hand = (images - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(standardising({"image": images})["tokens"], plain({"image": by_hand})["tokens"])
    with pytest.raises(ValueError, match="give both pixel_mean and pixel_std"):
        ViTPreprocessor(8, 4, dim=8, pixel_mean=mean)


def test_a_convolutional_stem_gives_the_same_token_layout():
    torch.manual_seed(0)
    pre = ViTPreprocessor(16, 4, dim=8, pos_embed="learned", cls_token=True, stem="conv")
    images = torch.rand(2, 3, 16, 16)
    data = pre({"image": images})
    feature_map = pre.patch_embed.layers(images)  # [B, dim, 4, 4]
    patches = feature_map.permute(0, 2, 3, 1).reshape(2, 16, 8) + pre.pos_embed[0]
    assert data["num_extra_tokens"] == 1
    torch.testing.assert_close(data["tokens"], torch.cat([pre.cls_token.expand(2, -1, -1), patches], dim=1))
    with pytest.raises(ValueError, match="stem must be one of"):
        ViTPreprocessor(16, 4, dim=8, stem="hmlp")
