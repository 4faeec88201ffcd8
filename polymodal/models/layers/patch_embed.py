"""Images to patches and back, and the patch embedding built on them.

One patch layout for the whole library: ``[B, C, H, W]`` images become ``[B, N, ph * pw * C]`` with the patches
in row-major grid order (patch ``n`` is grid row ``n // grid_w``, column ``n % grid_w``) and each patch flattened in
``(ph, pw, c)`` order, channels fastest. This is the order of MAE/AIM pixel targets and of 4M's patch projection, so
one :class:`PatchEmbed` serves ViTs, 4M, and the targets of pixel objectives alike.
"""

from __future__ import annotations

from torch import Tensor, nn

PatchSize = int | tuple[int, int]


def patch_hw(patch_size: PatchSize) -> tuple[int, int]:
    """``(ph, pw)`` of an int or ``(h, w)`` patch size; a ValueError if it is not positive."""
    pair = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"patch_size must be a positive int or (h, w) pair, got {patch_size}")
    return int(pair[0]), int(pair[1])


def grid_size(image_hw: tuple[int, int], patch_size: PatchSize) -> tuple[int, int]:
    """Patch grid ``(h, w)`` of an image of size ``(H, W)``; both must divide by the patch size."""
    (height, width), (patch_h, patch_w) = image_hw, patch_hw(patch_size)
    if height % patch_h or width % patch_w:
        raise ValueError(f"image size {(height, width)} is not divisible by patch size {(patch_h, patch_w)}")
    return height // patch_h, width // patch_w


def patchify(images: Tensor, patch_size: PatchSize) -> Tensor:
    """``[B, C, H, W] -> [B, N, ph * pw * C]`` (layout: see the module docstring)."""
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    (grid_h, grid_w), (patch_h, patch_w) = grid_size((height, width), patch_size), patch_hw(patch_size)
    patches = images.reshape(batch, channels, grid_h, patch_h, grid_w, patch_w).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, grid_h * grid_w, patch_h * patch_w * channels)


def unpatchify(patches: Tensor, patch_size: PatchSize, grid: tuple[int, int]) -> Tensor:
    """The inverse of :func:`patchify`: ``[B, N, ph * pw * C] -> [B, C, grid_h * ph, grid_w * pw]``."""
    patch_h, patch_w = patch_hw(patch_size)
    grid_h, grid_w = grid
    if patches.dim() != 3 or patches.shape[1] != grid_h * grid_w or patches.shape[2] % (patch_h * patch_w):
        raise ValueError(
            f"patches must be [B, {grid_h * grid_w}, {patch_h}*{patch_w}*C] for grid {grid}, got {tuple(patches.shape)}"
        )
    batch, channels = patches.shape[0], patches.shape[2] // (patch_h * patch_w)
    images = patches.reshape(batch, grid_h, grid_w, patch_h, patch_w, channels).permute(0, 5, 1, 3, 2, 4)
    return images.reshape(batch, channels, grid_h * patch_h, grid_w * patch_w)


class PatchGrid:
    """What every patch embedding shares: its ``patch_size`` and ``in_channels``, the token grid of an image size,
    and the check of its input images."""

    patch_size: tuple[int, int]
    in_channels: int

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an image of size ``(H, W)``."""
        return grid_size(image_hw, self.patch_size)

    def check_images(self, images: Tensor) -> tuple[int, int]:
        """The patch grid of ``images`` ``[B, C, H, W]``; a ValueError for another layout, channel count or size."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be [B, C={self.in_channels}, H, W], got {tuple(images.shape)}")
        return self.grid_size((images.shape[-2], images.shape[-1]))


class PatchEmbed(PatchGrid, nn.Linear):
    """``[B, C, H, W] -> [B, N, dim]``: :func:`patchify`, then a linear map of each flattened patch.

    It *is* the ``nn.Linear`` over ``ph * pw * C`` inputs (weight ``[dim, ph * pw * C]``), so a model holding it as
    ``proj`` has the state-dict keys ``proj.weight`` / ``proj.bias`` of a plain Linear, and weight initialisers,
    FLOP counters and parallel planners treat it as the matmul it is. A Conv2d patch embedding's weight
    ``[dim, C, ph, pw]`` maps onto this one by :func:`conv_weight_as_linear`.
    """

    def __init__(self, patch_size: PatchSize, in_channels: int, dim: int, bias: bool = True) -> None:
        patch_h, patch_w = patch_hw(patch_size)
        super().__init__(patch_h * patch_w * in_channels, dim, bias=bias)
        self.patch_size = (patch_h, patch_w)
        self.in_channels = in_channels

    def forward(self, images: Tensor) -> Tensor:
        self.check_images(images)
        return super().forward(patchify(images, self.patch_size))

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, in_channels={self.in_channels}, {super().extra_repr()}"


def conv_weight_as_linear(weight: Tensor) -> Tensor:
    """A Conv2d patch embedding's weight ``[dim, C, ph, pw]`` as :class:`PatchEmbed`'s ``[dim, ph * pw * C]``."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def linear_weight_as_conv(weight: Tensor, patch_size: PatchSize, in_channels: int) -> Tensor:
    """:class:`PatchEmbed`'s weight as the ``[dim, C, ph, pw]`` weight of the equivalent Conv2d."""
    patch_h, patch_w = patch_hw(patch_size)
    return weight.reshape(weight.shape[0], patch_h, patch_w, in_channels).permute(0, 3, 1, 2).contiguous()
