"""The ViT preprocessor: images in, the token sequence of a vision transformer out.

``[B, C, H, W]`` images become ``[B, E + N, D]`` tokens laid out as ``[CLS][register_1 .. register_R][patch_1 ..
patch_N]``: the E = ``cls_token + num_registers`` extra tokens first, then the patches in row-major grid order.
E is written beside the tokens, so the blocks after it (a prefix mask, a per-patch head) know where the patches
start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torchvision.transforms.v2 import Normalize

from polymodal.models.layers.conv_stem import ConvStem
from polymodal.models.layers.norm import NormKind, norm_factory
from polymodal.models.layers.patch_embed import PatchEmbed, PatchSize, grid_size
from polymodal.models.layers.posembed import sincos_2d
from polymodal.models.meta import DataDict, ReadWriteBlock

PosEmbed = Literal["sincos", "learned"]
POS_EMBEDS = ("sincos", "learned")
Stem = Literal["linear", "conv"]
STEMS = ("linear", "conv")
INIT_STD = 0.02


class ViTPreprocessor(ReadWriteBlock):
    """Patch embedding, position embedding, optional CLS and register tokens.

    Each patch token is ``patch_norm(PatchEmbed(patch)) + position``. Positions are a fixed 2D sin-cos table
    (``"sincos"``, a non-persistent buffer recomputed by :meth:`reset_parameters`), a learned table (``"learned"``,
    N(0, 0.02)) or none. They cover the patches only: the CLS token and the registers are learned vectors whose
    place is fixed, so a position of their own would add nothing (as MAE's all-zero CLS position shows).

    Args:
        image_size: ``H`` or ``(H, W)`` of the images; the position table covers its patch grid.
        patch_size: ``p`` or ``(ph, pw)``.
        dim: token width.
        in_channels: image channels.
        pos_embed: ``"sincos"``, ``"learned"`` or None.
        cls_token: prepend one learned CLS token.
        num_registers: learned register tokens (Darcet et al. 2024) placed after the CLS, before the patches.
        patch_norm: a norm on the projected patches, before the positions are added (AIMv1 uses a LayerNorm,
            AIMv2 an RMSNorm); None for none.
        patch_norm_eps: its epsilon.
        patch_bias: bias of the patch projection.
        stem: ``"linear"``, the papers' patch projection, or ``"conv"``, a convolutional stem (ViT_C,
            :class:`~polymodal.models.layers.conv_stem.ConvStem`) that learns local shapes from less data; not for
            models whose targets are a patch's own pixels (AIM), as its convolutions see the neighbouring patches.
        pixel_mean, pixel_std: standardise the pixels per channel first (for images in [0, 1]); None for neither.
        read_key: the images; write_key: the tokens; extra_tokens_key: where E, an int, is written.

    Initialisation: :meth:`reset_parameters` covers the CLS, registers and learned positions (N(0, 0.02)); the patch
    projection is an ``nn.Linear`` (``init_weights(model, "xavier")`` gives it MAE's and AIM's init).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: PatchSize,
        dim: int,
        in_channels: int = 3,
        pos_embed: PosEmbed | None = "sincos",
        cls_token: bool = False,
        num_registers: int = 0,
        patch_norm: NormKind | None = None,
        patch_norm_eps: float = 1e-6,
        patch_bias: bool = True,
        stem: Stem = "linear",
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        read_key: str = "image",
        write_key: str = "tokens",
        extra_tokens_key: str = "num_extra_tokens",
    ) -> None:
        super().__init__(read_key, [write_key, extra_tokens_key])
        if pos_embed is not None and pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS} or None, got {pos_embed!r}")
        if num_registers < 0:
            raise ValueError(f"num_registers must be >= 0, got {num_registers}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if (pixel_mean is None) != (pixel_std is None):
            raise ValueError("give both pixel_mean and pixel_std, or neither")
        image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.standardise = Normalize(list(pixel_mean), list(pixel_std)) if pixel_mean is not None else None
        if stem == "conv":
            self.patch_embed: PatchEmbed | ConvStem = ConvStem(patch_size, in_channels, dim)
        else:
            self.patch_embed = PatchEmbed(patch_size, in_channels, dim, bias=patch_bias)
        self.grid = grid_size(self.image_hw, self.patch_embed.patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.dim = dim
        self.patch_norm = norm_factory(patch_norm, patch_norm_eps)(dim) if patch_norm is not None else None
        self.pos_embed_kind = pos_embed
        if pos_embed == "sincos":
            self.register_buffer("pos_embed", torch.empty(1, self.num_patches, dim), persistent=False)
        elif pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.empty(1, self.num_patches, dim))
        else:
            self.pos_embed = None
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim)) if cls_token else None
        self.registers = nn.Parameter(torch.empty(1, num_registers, dim)) if num_registers else None
        self.num_extra_tokens = int(cls_token) + num_registers
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.02) CLS, registers and learned positions; the sin-cos table recomputed. Children are left alone."""
        if self.pos_embed_kind == "sincos":
            self.pos_embed.copy_(sincos_2d(*self.grid, self.dim)[None])
        elif self.pos_embed_kind == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        for tokens in (self.cls_token, self.registers):
            if tokens is not None:
                nn.init.normal_(tokens, std=INIT_STD)

    def forward(self, data: DataDict) -> DataDict:
        images = data[self.read_keys[0]]
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.image_hw:
            expected = f"[B, C, {self.image_hw[0]}, {self.image_hw[1]}]"
            raise ValueError(f"images must be {expected}, got {tuple(images.shape)}")
        if self.standardise is not None:
            images = self.standardise(images)
        tokens = self.patch_embed(images)
        if self.patch_norm is not None:
            tokens = self.patch_norm(tokens)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed.to(tokens.dtype)
        extras = [t for t in (self.cls_token, self.registers) if t is not None]
        if extras:
            batch = tokens.shape[0]
            tokens = torch.cat([*(t.to(tokens.dtype).expand(batch, -1, -1) for t in extras), tokens], dim=1)
        tokens_key, extra_key = self.write_keys
        data[tokens_key] = tokens
        data[extra_key] = self.num_extra_tokens
        return data

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_hw}, grid={self.grid}, pos_embed={self.pos_embed_kind}, "
            f"num_extra_tokens={self.num_extra_tokens}"
        )
