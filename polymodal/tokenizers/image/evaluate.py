"""Evaluate an image tokenizer on held-out synthetic scenes against the "down-sample, then up-sample" baseline.

A tokenizer that compresses an image ``f``-fold per side must at least beat the trivial codec that keeps an
``H/f × W/f`` thumbnail: area (average-pool) down and bilinear up for continuous modalities, the block's most
frequent class down and nearest up for semseg. The baseline keeps full-precision floats per thumbnail pixel, so
beating it with a few bits per code position is meaningful.

Quality is PSNR in natural units (peak: 1 for rgb in [0, 1], 2 for unit normals in [-1, 1], the caller's
``depth_range`` for depth — the synthetic renderer's far plane of 20 m for the built-in scenes) or mean IoU for
semseg. The caller hands the images in (``polymodal tokenizer eval`` renders held-out synthetic scenes).
Codebook usage is the fraction of codes used at least once over the whole evaluation set; perplexity is ``exp``
of the entropy of the code histogram. For rgb the colour error is
reported too, as PSNR barely notices a hue turned grey: the mean absolute error of the chroma (each pixel minus its
grey level).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from polymodal.colourmaps import (
    DEPTH_COLOURMAP,
    SEMSEG_COLOURS,
    depth_range,
    depth_to_rgb,
    normal_to_rgb,
    semseg_to_rgb,
)
from polymodal.progress import progress
from polymodal.tokenizers.image.metrics import chroma, codebook_usage, mean_iou, psnr
from polymodal.tokenizers.image.quantizers import codebook_perplexity
from polymodal.tokenizers.image.tokenizer import MODALITIES, ImageTokenizer

PSNR_DATA_RANGE = {"rgb": 1.0, "normal": 2.0}  # depth: the caller's depth_range
PNG_COLUMNS = ("original", "tokenizer", "down-up baseline")
KEY_INCHES = 0.8  # under the panels: the depth colour bar or the semseg legend


def down_up_baseline(images: Tensor, modality: str, downsample: int) -> Tensor:
    """``images`` reduced ``downsample``-fold per side and brought back to full size (see the module docstring)."""
    if downsample < 1 or images.shape[-1] % downsample or images.shape[-2] % downsample:
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} is not a multiple of the downsampling factor {downsample}"
        )
    if modality == "semseg":
        if images.ndim != 3 or images.dtype.is_floating_point:
            raise ValueError(f"semseg images must be integer class ids [B, H, W], got {images.dtype} {images.shape}")
        one_hot = F.one_hot(images.long()).permute(0, 3, 1, 2).float()
        block_mode = F.avg_pool2d(one_hot, downsample).argmax(dim=1, keepdim=True).float()
        return F.interpolate(block_mode, scale_factor=downsample, mode="nearest").squeeze(1).long()
    if modality not in MODALITIES:
        raise ValueError(f"unknown image modality {modality!r}; expected one of {MODALITIES}")
    if images.ndim != 4:
        raise ValueError(f"{modality} images must be [B, C, H, W], got shape {tuple(images.shape)}")
    thumbnail = F.avg_pool2d(images.float(), downsample)
    restored = F.interpolate(thumbnail, scale_factor=downsample, mode="bilinear", align_corners=False)
    return F.normalize(restored, dim=1) if modality == "normal" else restored  # as the tokenizer finishes normals


@torch.no_grad()
def reconstruct(tokenizer: ImageTokenizer, images: Tensor, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """``decode(encode(images))`` and the codes, in batches of ``batch_size``, on the tokenizer's device."""
    device = next(tokenizer.parameters()).device
    recons, codes = [], []
    batches = images.split(batch_size)
    with progress(f"encoding and decoding {len(images)} images", total=len(batches)) as advance:
        for batch in batches:
            batch_codes = tokenizer.encode(batch.to(device))
            recons.append(tokenizer.decode(batch_codes).cpu())
            codes.append(batch_codes.cpu())
            advance(1)
    return torch.cat(recons), torch.cat(codes)


def _quality(prediction: Tensor, target: Tensor, num_classes: int | None, data_range: float | None) -> float:
    if data_range is None:
        return mean_iou(prediction, target, num_classes).item()
    return psnr(prediction, target, data_range).item()


def evaluate_tokenizer(
    tokenizer: ImageTokenizer,
    modality: str,
    images: Tensor,
    downsample: int,
    batch_size: int = 16,
    depth_range: float | None = None,
) -> dict[str, Any]:
    """Tokenizer vs down-up baseline quality, codebook usage and perplexity on ``images`` (natural units);
    depth needs ``depth_range``, the PSNR peak in metres (the far plane of the data).

    Returns ``metric`` ("psnr" or "miou"), ``tokenizer_<metric>``, ``baseline_<metric>``, ``beats_baseline``,
    ``codebook_usage``, ``perplexity`` and the settings they were measured with.
    """
    if modality != tokenizer.modality or downsample != tokenizer.downsample:
        raise ValueError(
            f"the tokenizer is a {tokenizer.modality} tokenizer with downsample {tokenizer.downsample}, "
            f"asked to evaluate {modality} with downsample {downsample}"
        )
    if modality == "depth" and not depth_range:
        raise ValueError("depth PSNR needs depth_range: the far plane of the data in metres")
    data_range = depth_range if modality == "depth" else PSNR_DATA_RANGE.get(modality)
    tokenizer.eval()
    recons, codes = reconstruct(tokenizer, images, batch_size)
    baseline = down_up_baseline(images, modality, downsample)
    num_classes = getattr(tokenizer.normalization, "num_classes", None)
    metric = "miou" if modality == "semseg" else "psnr"
    tokenizer_quality = _quality(recons, images, num_classes, data_range)
    baseline_quality = _quality(baseline, images, num_classes, data_range)
    counts = torch.bincount(codes.flatten(), minlength=tokenizer.codebook_size)
    colour = {}
    if modality == "rgb":
        colour = {
            "tokenizer_chroma_error": chroma_error(recons, images),
            "baseline_chroma_error": chroma_error(baseline, images),
        }
    return {
        "modality": modality,
        "num_images": len(images),
        "image_size": list(images.shape[-2:]),
        "downsample": downsample,
        "metric": metric,
        "data_range": data_range,
        f"tokenizer_{metric}": tokenizer_quality,
        f"baseline_{metric}": baseline_quality,
        "beats_baseline": tokenizer_quality > baseline_quality,
        "codebook_size": tokenizer.codebook_size,
        "codebook_usage": codebook_usage(counts).item(),
        "perplexity": codebook_perplexity(counts).item(),
        **colour,
    }


def chroma_error(prediction: Tensor, target: Tensor) -> float:
    """Mean absolute difference of the chroma of ``[B, 3, H, W]`` rgb images (0: every hue right)."""
    return (chroma(prediction.float()) - chroma(target.float())).abs().mean().item()


def to_viewable_rgb(image: Tensor, modality: str, near_far: tuple[float, float] | None = None) -> np.ndarray:
    """One image of ``modality`` (no batch dimension) → uint8 [H, W, 3]; depth is coloured from ``near_far``
    (metres, :func:`~polymodal.colourmaps.depth_to_rgb`; default: the image's own range)."""
    image = image.detach().cpu()
    if modality == "rgb":
        return (image.float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if modality == "depth":
        return depth_to_rgb(image.float(), near_far)
    if modality == "normal":
        return normal_to_rgb(image.float())
    if modality == "semseg":
        return semseg_to_rgb(image.long())
    raise ValueError(f"unknown image modality {modality!r}; expected one of {MODALITIES}")


def reconstructions_figure(
    originals: Tensor, recons: Tensor, baseline: Tensor, modality: str = "rgb", class_names: Sequence[str] = ()
) -> Figure:
    """A labelled grid: one row per sample, columns original / tokenizer / down-up baseline (colour-mapped).

    Depth panels share one colour scale, shown by a colour bar in metres; semseg maps get a legend of the classes
    they show, ``class_names[i]`` naming class ``i`` (``class i`` past its end).
    """
    if not len(originals) == len(recons) == len(baseline) or len(originals) == 0:
        raise ValueError(
            f"originals, recons and baseline must hold the same, non-zero number of images, got "
            f"{len(originals)}, {len(recons)}, {len(baseline)}"
        )
    rows = len(originals)
    key_inches = KEY_INCHES if modality in ("depth", "semseg") else 0.0
    width, height = 2.2 * len(PNG_COLUMNS), 2.2 * rows + key_inches
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, len(PNG_COLUMNS), squeeze=False)
    near_far = depth_range([originals, recons, baseline]) if modality == "depth" else None
    for row, images in enumerate(zip(originals, recons, baseline, strict=True)):
        for column, (image, title) in enumerate(zip(images, PNG_COLUMNS, strict=True)):
            axis = axes[row][column]
            axis.imshow(to_viewable_rgb(image, modality, near_far), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"{title} ({modality})" if column == 0 else title, fontsize=10)
        axes[row][0].set_ylabel(f"#{row}", fontsize=9)
    key_fraction = key_inches / height
    figure.tight_layout(rect=(0, key_fraction, 1, 1))
    if near_far is not None:
        _depth_colour_bar(figure, near_far, key_fraction)
    if modality == "semseg":
        _semseg_legend(figure, torch.cat([originals.flatten(), recons.flatten(), baseline.flatten()]), class_names)
    return figure


def _semseg_legend(figure: Figure, class_ids: Tensor, class_names: Sequence[str]) -> None:
    """A swatch and a name under the panels for every class in ``class_ids``."""
    handles = [
        Patch(
            facecolor=SEMSEG_COLOURS[i] / 255,
            edgecolor="black",
            label=class_names[i] if i < len(class_names) else f"class {i}",
        )
        for i in torch.unique(class_ids).tolist()
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)


def _depth_colour_bar(figure: Figure, near_far: tuple[float, float], key_fraction: float) -> None:
    """A horizontal bar under the panels: inverse depth from near (left, bright) to far (right), ticks in metres."""
    near, far = near_far
    scale = ScalarMappable(Normalize(1.0 / far, 1.0 / near), DEPTH_COLOURMAP)
    bar_axis = figure.add_axes((0.1, key_fraction * 0.55, 0.8, key_fraction * 0.2))
    bar = figure.colorbar(scale, cax=bar_axis, orientation="horizontal")
    ticks = np.linspace(1.0 / near, 1.0 / far, 5)
    bar.set_ticks(ticks, labels=[f"{1.0 / tick:.1f}" for tick in ticks])
    bar_axis.invert_xaxis()
    bar.set_label("depth in metres (near: bright)", fontsize=9)


def write_reconstructions_png(
    path: str | Path,
    originals: Tensor,
    recons: Tensor,
    baseline: Tensor,
    modality: str = "rgb",
    class_names: Sequence[str] = (),
) -> Path:
    """:func:`reconstructions_figure` as a PNG at ``path``."""
    figure = reconstructions_figure(originals, recons, baseline, modality, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def format_table(results: dict[str, Any]) -> str:
    metric = results["metric"]
    unit = " dB" if metric == "psnr" else ""
    rows = [
        (f"tokenizer {metric}", f"{results[f'tokenizer_{metric}']:.3f}{unit}"),
        (f"down-up baseline {metric} (x{results['downsample']})", f"{results[f'baseline_{metric}']:.3f}{unit}"),
        ("beats baseline", "yes" if results["beats_baseline"] else "NO"),
        ("codebook usage", f"{results['codebook_usage']:.1%} of {results['codebook_size']}"),
        ("perplexity", f"{results['perplexity']:.1f}"),
    ]
    if results["data_range"] is not None:
        rows.insert(2, ("psnr data range", f"{results['data_range']:g}"))
    if "tokenizer_chroma_error" in results:
        rows.insert(3, ("chroma error (tokenizer / baseline)", _pair(results, "chroma_error")))
    width = max(len(name) for name, _ in rows)
    header = f"{results['modality']} tokenizer on {results['num_images']} held-out scenes"
    return "\n".join([header, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def _pair(results: dict[str, Any], name: str) -> str:
    return f"{results[f'tokenizer_{name}']:.4f} / {results[f'baseline_{name}']:.4f}"
