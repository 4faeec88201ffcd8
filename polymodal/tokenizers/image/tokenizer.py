"""Image VQ tokenizers: a convolutional encoder, a quantizer, a mirrored decoder, and the modality's units.

An :class:`ImageTokenizer` turns one image modality into a grid of discrete codes and back. It carries its own
:class:`Normalization`, so a saved tokenizer never depends on a pre-processing convention kept elsewhere: callers
hand it data in the modality's natural units (as :class:`~polymodal.data.multimodal.data_module.MultimodalData`
yields them) and get natural units back.

==========  =========================  ===============================  ==================================
modality    natural units              model space (encoder in)         decoder out → natural units
==========  =========================  ===============================  ==================================
rgb         float [B,3,H,W] in [0,1]   ``2x - 1`` in [-1, 1]            ``(y + 1) / 2``
depth       float [B,1,H,W] metres     ``(log d - mean) / std``         ``exp(y·std + mean)``
normal      float [B,3,H,W] in [-1,1]  as is                            as is
semseg      int64 [B,H,W] class ids    learned class embedding          class logits [B,C,H,W]
==========  =========================  ===============================  ==================================

In the data_dict the reconstruction (``<modality>_recon``) stays differentiable: semseg keeps its logits there.
:meth:`ImageTokenizer.decode` returns finished images: rgb clamped to [0, 1], normals of unit length, depth
clamped to the positive range, semseg class ids (argmax of the logits).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.models.meta import DataDict, ReadWriteBlock
from polymodal.tokenizers.image.quantizers import Quantizer, QuantizerOutput

MODALITIES = ("rgb", "depth", "normal", "semseg")
DEFAULT_MIN_DEPTH = 1e-3  # metres; depths below (e.g. absent samples' zeros) are clamped before the log
NUM_GROUPS = 8  # GroupNorm groups (fewer when a width is not divisible by it)


class Normalization(nn.Module):
    """Maps a modality between its natural units and the tokenizer's model space (see the module docstring)."""

    modality: str
    in_channels: int  # encoder input channels
    out_channels: int  # decoder output channels

    def check(self, images: Tensor) -> None:
        """Raise a ValueError naming the modality if ``images`` does not have this modality's layout."""
        expects_channels = self.modality != "semseg"
        ndim = 4 if expects_channels else 3
        if images.ndim != ndim or (expects_channels and images.shape[1] != self.in_channels):
            layout = f"[B, {self.in_channels}, H, W]" if expects_channels else "[B, H, W]"
            raise ValueError(f"{self.modality} images must be {layout}, got shape {tuple(images.shape)}")

    def normalize(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement normalize")

    def denormalize(self, output: Tensor) -> Tensor:
        """Decoder output → the differentiable reconstruction in natural units (semseg: logits)."""
        raise NotImplementedError(f"{type(self).__name__} must implement denormalize")

    def finish(self, recon: Tensor) -> Tensor:
        """A reconstruction → a finished image (clamped to the valid range, or class ids)."""
        return recon


class RGBNormalization(Normalization):
    modality, in_channels, out_channels = "rgb", 3, 3

    def normalize(self, images: Tensor) -> Tensor:
        return images.float() * 2.0 - 1.0

    def denormalize(self, output: Tensor) -> Tensor:
        return (output.float() + 1.0) / 2.0

    def finish(self, recon: Tensor) -> Tensor:
        return recon.clamp(0.0, 1.0)


class DepthNormalization(Normalization):
    """Log-depth standardised by ``log_mean``/``log_std`` (buffers, so they travel with the weights).

    Depths below ``min_depth`` (including the zeros of absent samples) are clamped to it before the log.
    Use :func:`fit_log_depth_statistics` to measure the statistics on a data set.
    """

    modality, in_channels, out_channels = "depth", 1, 1

    def __init__(self, log_mean: float = 0.0, log_std: float = 1.0, min_depth: float = DEFAULT_MIN_DEPTH):
        super().__init__()
        if log_std <= 0 or min_depth <= 0:
            raise ValueError(f"depth normalisation needs log_std > 0 and min_depth > 0, got {log_std}, {min_depth}")
        self.min_depth = min_depth
        self.register_buffer("log_mean", torch.tensor(float(log_mean)))
        self.register_buffer("log_std", torch.tensor(float(log_std)))

    def normalize(self, images: Tensor) -> Tensor:
        return (images.float().clamp_min(self.min_depth).log() - self.log_mean) / self.log_std

    def denormalize(self, output: Tensor) -> Tensor:
        return torch.exp(output.float() * self.log_std + self.log_mean)

    def finish(self, recon: Tensor) -> Tensor:
        return recon.clamp_min(self.min_depth)


class NormalMapNormalization(Normalization):
    """Surface normals are already in [-1, 1]; finished normals are rescaled to unit length."""

    modality, in_channels, out_channels = "normal", 3, 3

    def normalize(self, images: Tensor) -> Tensor:
        return images.float()

    def denormalize(self, output: Tensor) -> Tensor:
        return output.float()

    def finish(self, recon: Tensor) -> Tensor:
        return F.normalize(recon, dim=1)


class SemsegNormalization(Normalization):
    """Class ids in through a learned embedding; class logits out, finished by argmax."""

    modality = "semseg"

    def __init__(self, num_classes: int, embed_dim: int = 16):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"semseg needs num_classes >= 2, got {num_classes}")
        self.num_classes, self.in_channels, self.out_channels = num_classes, embed_dim, num_classes
        self.class_embedding = nn.Embedding(num_classes, embed_dim)

    def check(self, images: Tensor) -> None:
        super().check(images)
        if images.dtype.is_floating_point or images.dtype == torch.bool:
            raise ValueError(f"semseg images must hold integer class ids, got dtype {images.dtype}")
        if images.numel() and (images.min() < 0 or images.max() >= self.num_classes):
            raise ValueError(
                f"semseg class ids must be in [0, {self.num_classes}), got range "
                f"[{int(images.min())}, {int(images.max())}]"
            )

    def normalize(self, images: Tensor) -> Tensor:
        return self.class_embedding(images.long()).permute(0, 3, 1, 2)

    def denormalize(self, output: Tensor) -> Tensor:
        return output.float()

    def finish(self, recon: Tensor) -> Tensor:
        return recon.argmax(dim=1)


def build_normalization(
    modality: str,
    num_classes: int | None = None,
    class_embed_dim: int = 16,
    depth_log_mean: float = 0.0,
    depth_log_std: float = 1.0,
) -> Normalization:
    if modality == "rgb":
        return RGBNormalization()
    if modality == "depth":
        return DepthNormalization(depth_log_mean, depth_log_std)
    if modality == "normal":
        return NormalMapNormalization()
    if modality == "semseg":
        if num_classes is None:
            raise ValueError("the semseg tokenizer needs num_classes")
        return SemsegNormalization(num_classes, class_embed_dim)
    raise ValueError(f"unknown image tokenizer modality {modality!r}; expected one of {MODALITIES}")


def fit_log_depth_statistics(depths: Iterable[Tensor], min_depth: float = DEFAULT_MIN_DEPTH) -> tuple[float, float]:
    """Mean and standard deviation of ``log(max(depth, min_depth))`` over all pixels of ``depths``."""
    count, total, total_sq = 0, 0.0, 0.0
    for depth in depths:
        logs = depth.double().clamp_min(min_depth).log()
        count += logs.numel()
        total += logs.sum().item()
        total_sq += logs.square().sum().item()
    if count < 2:
        raise ValueError("fit_log_depth_statistics needs at least two depth pixels")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(NUM_GROUPS, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, plus a (1×1-projected when widths differ) skip connection."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _group_norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _stage(in_channels: int, out_channels: int, num_res_blocks: int) -> list[nn.Module]:
    return [ResBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_res_blocks)]


def _output_head(channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [_group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, kernel_size, padding=kernel_size // 2)]


class ConvEncoder(nn.Sequential):
    """Residual stages at widths ``channels[0..n]``, halving the resolution between stages (factor 2^n)."""

    def __init__(self, in_channels: int, channels: Sequence[int], num_res_blocks: int, out_channels: int):
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        width = channels[0]
        for level, stage_width in enumerate(channels):
            layers += _stage(width, stage_width, num_res_blocks)
            width = stage_width
            if level < len(channels) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        layers += [ResBlock(width, width), *_output_head(width, out_channels, kernel_size=1)]
        super().__init__(*layers)


class ConvDecoder(nn.Sequential):
    """The encoder mirrored: stages at ``channels[n..0]`` with nearest-neighbour ×2 upsampling + conv between."""

    def __init__(self, in_channels: int, channels: Sequence[int], num_res_blocks: int, out_channels: int):
        width = channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 1), ResBlock(width, width)]
        for level, stage_width in enumerate(reversed(channels)):
            layers += _stage(width, stage_width, num_res_blocks)
            width = stage_width
            if level < len(channels) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        layers += _output_head(width, out_channels, kernel_size=3)
        super().__init__(*layers)


class ImageTokenizer(ReadWriteBlock):
    """Reads ``<modality>``; writes ``<modality>_codes`` (int64 [B,h,w]), ``<modality>_recon`` (natural units,
    semseg logits), ``<modality>_vq_loss`` (scalar) and ``<modality>_vq_usage`` (code counts [codebook_size]).

    Args:
        normalization: the modality's units (see the module docstring); its ``modality`` names the keys.
        encoder: maps model-space images [B, in, H, W] to latents [B, quantizer.dim, H/f, W/f].
        quantizer: a :class:`~polymodal.tokenizers.image.quantizers.Quantizer`.
        decoder: maps quantized latents back to [B, out, H, W].
        downsample: the encoder's spatial reduction factor ``f``.
    """

    def __init__(
        self,
        normalization: Normalization,
        encoder: nn.Module,
        quantizer: Quantizer,
        decoder: nn.Module,
        downsample: int,
    ):
        modality = normalization.modality
        super().__init__(
            read_keys=modality,
            write_keys=[f"{modality}_codes", f"{modality}_recon", f"{modality}_vq_loss", f"{modality}_vq_usage"],
        )
        self.modality = modality
        self.downsample = downsample
        self.normalization = normalization
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def latent_grid(self, size: int | tuple[int, int]) -> tuple[int, int]:
        """The code grid ``(h, w)`` of an image of ``size`` (an int for square images, or ``(H, W)``)."""
        height, width = (size, size) if isinstance(size, int) else size
        if height % self.downsample or width % self.downsample or height <= 0 or width <= 0:
            raise ValueError(
                f"{self.modality} image size {height}x{width} is not a positive multiple of the tokenizer's "
                f"downsampling factor {self.downsample}"
            )
        return height // self.downsample, width // self.downsample

    def tokens_per_image(self, size: int | tuple[int, int]) -> int:
        height, width = self.latent_grid(size)
        return height * width

    def _quantize(self, images: Tensor) -> QuantizerOutput:
        self.normalization.check(images)
        self.latent_grid(tuple(images.shape[-2:]))
        return self.quantizer(self.encoder(self.normalization.normalize(images)))

    def forward(self, data: DataDict) -> DataDict:
        quantized = self._quantize(data[self.modality])
        codes_key, recon_key, loss_key, usage_key = self.write_keys
        data[codes_key] = quantized.codes
        data[recon_key] = self.normalization.denormalize(self.decoder(quantized.latent))
        data[loss_key] = quantized.loss
        data[usage_key] = quantized.usage
        return data

    def _require_eval(self, method: str) -> None:
        if self.training:
            raise RuntimeError(
                f"ImageTokenizer.{method}() needs eval mode: in training mode the quantizer updates its codebook; "
                "call .eval() first"
            )

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in natural units → codes, int64 [B, H/f, W/f]."""
        self._require_eval("encode")
        return self._quantize(images).codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, h, w] → finished images in natural units (semseg: int64 class ids [B, H, W])."""
        self._require_eval("decode")
        latent = self.quantizer.codes_to_latent(codes)  # checks the codes' shape, dtype and range
        return self.normalization.finish(self.normalization.denormalize(self.decoder(latent)))


def build_image_tokenizer(
    modality: str,
    quantizer: Quantizer,
    downsample: int = 8,
    channels: Sequence[int] = (32, 64, 64, 128),
    num_res_blocks: int = 1,
    num_classes: int | None = None,
    class_embed_dim: int = 16,
    depth_log_mean: float = 0.0,
    depth_log_std: float = 1.0,
) -> ImageTokenizer:
    """An :class:`ImageTokenizer` for ``modality`` around ``quantizer`` (a VectorQuantizer or FSQ node in configs).

    ``channels`` gives one width per resolution level, so it has ``log2(downsample) + 1`` entries. ``num_classes``
    is required for semseg; ``depth_log_mean``/``depth_log_std`` standardise log-depth (measure them with
    :func:`fit_log_depth_statistics`).
    """
    if downsample < 2 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of two >= 2, got {downsample}")
    levels = downsample.bit_length()  # log2(downsample) + 1
    channels = list(channels)
    if len(channels) != levels:
        raise ValueError(
            f"channels {channels} must give one width per resolution level: {levels} entries for downsample "
            f"{downsample}"
        )
    normalization = build_normalization(modality, num_classes, class_embed_dim, depth_log_mean, depth_log_std)
    encoder = ConvEncoder(normalization.in_channels, channels, num_res_blocks, quantizer.dim)
    decoder = ConvDecoder(quantizer.dim, channels, num_res_blocks, normalization.out_channels)
    return ImageTokenizer(normalization, encoder, quantizer, decoder, downsample)
