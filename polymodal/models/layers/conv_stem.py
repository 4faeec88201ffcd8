"""A convolutional stem in place of the linear patch projection (ViT_C: Xiao et al. 2021, "Early Convolutions Help
Transformers See Better").

A stack of 3x3 stride-2 convolutions, each followed by a one-group GroupNorm and a ReLU, halves the image
``log2(patch_size)`` times, and a final 1x1 convolution maps to the token width: ``[B, C, H, W] -> [B, N, dim]``
with the tokens in the same row-major grid order as :class:`~polymodal.models.layers.patch_embed.PatchEmbed`. The
paper uses BatchNorm; GroupNorm(1) normalises each image on its own, so a step does not depend on how the batch is
split across ranks. Its receptive field reaches into neighbouring patches, so a model that predicts a patch's own
pixels (AIM) must not use it.
"""

from __future__ import annotations

from torch import Tensor, nn

from polymodal.models.layers.patch_embed import PatchGrid, PatchSize, patch_hw


class ConvStem(PatchGrid, nn.Module):
    """``[B, C, H, W] -> [B, (H / p) * (W / p), dim]`` through ``log2(p)`` stride-2 convolutions.

    Args:
        patch_size: ``p`` (a power of two >= 2; square patches only): the stem's total stride.
        in_channels: image channels.
        dim: token width.
        widths: channels of the stride-2 convolutions; default ``dim / 2**(k-1) ... dim / 2, dim`` for ``k`` of them.
    """

    def __init__(
        self, patch_size: PatchSize, in_channels: int, dim: int, widths: tuple[int, ...] | list[int] | None = None
    ) -> None:
        super().__init__()
        patch_h, patch_w = patch_hw(patch_size)
        if patch_h != patch_w or patch_h < 2 or patch_h & (patch_h - 1):
            raise ValueError(f"a convolutional stem needs a square power-of-two patch size >= 2, got {patch_size}")
        num_convs = patch_h.bit_length() - 1
        widths = tuple(widths) if widths is not None else tuple(max(dim >> k, 1) for k in reversed(range(num_convs)))
        if len(widths) != num_convs:
            raise ValueError(f"patch size {patch_h} takes {num_convs} stride-2 convolutions, got widths {widths}")
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            conv = nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False)
            layers += [conv, nn.GroupNorm(1, width), nn.ReLU()]
            channels = width
        layers.append(nn.Conv2d(channels, dim, 1))
        self.layers = nn.Sequential(*layers)
        self.patch_size = (patch_h, patch_w)
        self.in_channels = in_channels

    def forward(self, images: Tensor) -> Tensor:
        self.check_images(images)  # the same errors as the linear projection's
        return self.layers(images).flatten(2).transpose(1, 2)
