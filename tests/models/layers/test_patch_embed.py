import pytest
import torch

from polymodal.models.layers.patch_embed import PatchEmbed, grid_size, patchify, unpatchify


def loop_patchify(images: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
    """Patches in row-major grid order, each flattened (ph, pw, c), written out with loops."""
    batch, channels, height, width = images.shape
    rows = []
    for b in range(batch):
        patches = []
        for r in range(height // patch_h):
            for c in range(width // patch_w):
                block = images[b, :, r * patch_h : (r + 1) * patch_h, c * patch_w : (c + 1) * patch_w]
                patches.append(torch.stack([block[ch, i, j] for i in range(patch_h) for j in range(patch_w)
                                            for ch in range(channels)]))  # fmt: skip
        rows.append(torch.stack(patches))
    return torch.stack(rows)


@pytest.mark.parametrize("patch_size, image_hw", [(4, (8, 12)), ((2, 3), (6, 9))])
def test_patchify_matches_loops_and_unpatchify_inverts_it(patch_size, image_hw):
    images = torch.randn(2, 3, *image_hw)
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    patches = patchify(images, patch_size)
    torch.testing.assert_close(patches, loop_patchify(images, patch_h, patch_w), rtol=0, atol=0)
    assert torch.equal(unpatchify(patches, patch_size, grid_size(image_hw, patch_size)), images)


@pytest.mark.parametrize("patch_size, image_hw", [(4, (8, 12)), ((2, 3), (6, 9))])
def test_patch_embed_is_a_linear_map_of_the_patches(patch_size, image_hw):
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size, in_channels=3, dim=10)
    images = torch.randn(2, 3, *image_hw)
    expected = patchify(images, patch_size) @ embed.weight.T + embed.bias
    out = embed(images)
    grid_h, grid_w = embed.grid_size(image_hw)
    assert out.shape == (2, grid_h * grid_w, 10)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert sorted(embed.state_dict()) == ["bias", "weight"]


def test_conv_weights_map_onto_the_patch_embedding():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, kernel_size=(2, 4), stride=(2, 4))
    embed = PatchEmbed((2, 4), in_channels=3, dim=8)
    with torch.no_grad():
        embed.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(8, -1))
        embed.bias.copy_(conv.bias)
    images = torch.randn(2, 3, 6, 8)
    torch.testing.assert_close(embed(images), conv(images).flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_patch_order_is_row_major():
    embed = PatchEmbed(2, in_channels=1, dim=1, bias=False)
    with torch.no_grad():
        embed.weight.fill_(0.25)
    image = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    means = embed(image)[0, :, 0]
    expected = [image[0, 0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean() for r in range(2) for c in range(3)]
    torch.testing.assert_close(means, torch.stack(expected))


def test_grid_size_and_bad_input():
    embed = PatchEmbed((2, 4), in_channels=3, dim=8)
    assert embed.grid_size((6, 8)) == (3, 2)
    with pytest.raises(ValueError, match="not divisible"):
        embed.grid_size((6, 10))
    with pytest.raises(ValueError, match="not divisible"):
        embed(torch.randn(1, 3, 5, 8))
    with pytest.raises(ValueError, match="C=3"):
        embed(torch.randn(1, 4, 6, 8))
    with pytest.raises(ValueError, match="patch_size"):
        PatchEmbed(0, in_channels=3, dim=8)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        patchify(torch.randn(3, 6, 8), 2)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(torch.randn(1, 5, 12), 2, (2, 2))
