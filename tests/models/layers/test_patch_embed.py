import pytest
import torch

from polymodal.models.layers.patch_embed import PatchEmbed


@pytest.mark.parametrize("patch_size, image_hw", [(4, (8, 12)), ((2, 3), (6, 9))])
def test_patch_embed_equals_unfold_and_matmul(patch_size, image_hw):
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size, in_channels=3, dim=10)
    patch_h, patch_w = embed.patch_size
    images = torch.randn(2, 3, *image_hw)
    patches = torch.nn.functional.unfold(images, kernel_size=(patch_h, patch_w), stride=(patch_h, patch_w))
    expected = patches.transpose(1, 2) @ embed.proj.weight.reshape(10, -1).T + embed.proj.bias
    out = embed(images)
    grid_h, grid_w = embed.grid_size(image_hw)
    assert out.shape == (2, grid_h * grid_w, 10)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_patch_order_is_row_major():
    embed = PatchEmbed(2, in_channels=1, dim=1, bias=False)
    with torch.no_grad():
        embed.proj.weight.fill_(0.25)
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
