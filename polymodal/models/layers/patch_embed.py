"""Image to patch tokens: a convolution whose stride equals its kernel."""

from __future__ import annotations

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """``[B, C, H, W] -> [B, (H / ph) * (W / pw), dim]``; patches flattened row-major."""

    def __init__(self, patch_size: int | tuple[int, int], in_channels: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        patch_hw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if len(patch_hw) != 2 or min(patch_hw) < 1:
            raise ValueError(f"patch_size must be a positive int or (h, w) pair, got {patch_size}")
        self.patch_size: tuple[int, int] = (int(patch_hw[0]), int(patch_hw[1]))
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an image of size ``(H, W)``; both must divide by the patch size."""
        height, width = image_hw
        patch_h, patch_w = self.patch_size
        if height % patch_h or width % patch_w:
            raise ValueError(f"image size {(height, width)} is not divisible by patch size {self.patch_size}")
        return height // patch_h, width // patch_w

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be [B, C={self.in_channels}, H, W], got {tuple(images.shape)}")
        self.grid_size((images.shape[-2], images.shape[-1]))
        return self.proj(images).flatten(2).transpose(1, 2)
