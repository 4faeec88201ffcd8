"""ConvStem (ViT_C): its convolutions against a plain computation, its token order, per-image independence, errors."""

import pytest
import torch
import torch.nn.functional as F

from polymodal.models.layers.conv_stem import ConvStem


def plain_stem(stem: ConvStem, images: torch.Tensor) -> torch.Tensor:
    """The stem's layers written out with functional calls, then one token per output pixel in row-major order."""
    x = images
    convs = [m for m in stem.layers if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in stem.layers if isinstance(m, torch.nn.GroupNorm)]
    for conv, norm in zip(convs[:-1], norms, strict=True):
        x = F.conv2d(x, conv.weight, stride=2, padding=1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / (var + norm.eps).sqrt()
        x = torch.relu(x * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1))
    x = F.conv2d(x, convs[-1].weight, convs[-1].bias)
    batch, dim, rows, cols = x.shape
    return torch.stack([torch.stack([x[b, :, r, c] for r in range(rows) for c in range(cols)]) for b in range(batch)])


@pytest.mark.parametrize("patch_size, widths", [(8, (32, 64, 128)), (2, (128,)), (4, (64, 128))])
def test_tokens_match_a_plain_computation(patch_size, widths):
    torch.manual_seed(0)
    stem = ConvStem(patch_size, 3, 128)
    assert tuple(m.out_channels for m in stem.layers if isinstance(m, torch.nn.Conv2d))[:-1] == widths
    for module in stem.modules():  # non-trivial norm affines, so the plain computation checks their use
        if isinstance(module, torch.nn.GroupNorm):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    images = torch.rand(2, 3, 16, 24)
    tokens = stem(images)
    assert tokens.shape == (2, (16 // patch_size) * (24 // patch_size), 128)
    assert stem.grid_size((16, 24)) == (16 // patch_size, 24 // patch_size)
    torch.testing.assert_close(tokens, plain_stem(stem, images), rtol=1e-5, atol=1e-5)


def test_each_images_tokens_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    stem = ConvStem(8, 3, 32)
    images = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(stem(images)[1:2], stem(images[1:2]))


def test_bad_sizes_are_named():
    for patch_size in (6, (8, 4), 1):
        with pytest.raises(ValueError, match="square power-of-two patch size"):
            ConvStem(patch_size, 3, 16)
    with pytest.raises(ValueError, match=r"takes 3 stride-2 convolutions, got widths \(8, 16\)"):
        ConvStem(8, 3, 16, widths=(8, 16))
    with pytest.raises(ValueError, match="not divisible"):
        ConvStem(8, 3, 16)(torch.rand(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r"\[B, C=3, H, W\]"):
        ConvStem(8, 3, 16)(torch.rand(1, 1, 16, 16))
