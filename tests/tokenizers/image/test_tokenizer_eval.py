"""Tokenizer evaluation: the baseline and metrics against plain computations, bad input, the png grid, the CLI
entry point, and (slow) the tiny rgb recipe trained until it clearly beats the down-up baseline."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polymodal.data.synth.held_out import held_out_scenes
from polymodal.data.synth.render import FAR
from polymodal.tokenizers.image.evaluate import (
    down_up_baseline,
    evaluate_tokenizer,
    reconstruct,
    reconstructions_figure,
    to_viewable_rgb,
    write_reconstructions_png,
)
from polymodal.tokenizers.image.quantizers import VectorQuantizer
from polymodal.tokenizers.image.tokenizer import build_image_tokenizer

REPO = Path(__file__).resolve().parents[3]
SIZE = 16


def tiny_tokenizer(modality: str, downsample: int = 4):
    torch.manual_seed(0)
    return build_image_tokenizer(
        modality, VectorQuantizer(dim=8, codebook_size=32), downsample=downsample, channels=[8, 16, 16], num_classes=5
    ).eval()


def naive_down_up(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Block means, then bilinear (half-pixel centres, edge-clamped) interpolation, one pixel at a time."""
    channels, height, width = image.shape
    small = image.reshape(channels, height // factor, factor, width // factor, factor).mean(dim=(2, 4))
    out = torch.empty_like(image)
    for y in range(height):
        for x in range(width):
            sy = min(max((y + 0.5) / factor - 0.5, 0.0), small.shape[1] - 1)
            sx = min(max((x + 0.5) / factor - 0.5, 0.0), small.shape[2] - 1)
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, small.shape[1] - 1), min(x0 + 1, small.shape[2] - 1)
            wy, wx = sy - y0, sx - x0
            out[:, y, x] = (
                small[:, y0, x0] * (1 - wy) * (1 - wx)
                + small[:, y0, x1] * (1 - wy) * wx
                + small[:, y1, x0] * wy * (1 - wx)
                + small[:, y1, x1] * wy * wx
            )
    return out


def test_continuous_baseline_is_area_down_bilinear_up():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([naive_down_up(image, 4) for image in images])
    torch.testing.assert_close(down_up_baseline(images, "rgb", 4), expected)
    torch.testing.assert_close(down_up_baseline(images, "normal", 4), F.normalize(expected, dim=1))


def test_semseg_baseline_is_block_mode_then_nearest():
    ids = torch.tensor([[0, 0, 3, 1], [0, 2, 3, 3], [4, 4, 1, 2], [4, 1, 2, 2]])[None]
    expected = torch.tensor([[0, 0, 3, 3], [0, 0, 3, 3], [4, 4, 2, 2], [4, 4, 2, 2]])[None]
    assert torch.equal(down_up_baseline(ids, "semseg", 2), expected)


def test_baseline_of_a_constant_image_is_exact_and_its_psnr_huge():
    constant = torch.full((2, 3, SIZE, SIZE), 0.3)
    torch.testing.assert_close(down_up_baseline(constant, "rgb", 4), constant)
    results = evaluate_tokenizer(tiny_tokenizer("rgb"), "rgb", constant, 4)
    assert results["baseline_psnr"] > 100  # mse clamped at 1e-12: 120 dB for a peak of 1
    assert results["baseline_chroma_error"] < 1e-6


def test_rgb_chroma_error_against_naive():
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    tokenizer = tiny_tokenizer("rgb")
    results = evaluate_tokenizer(tokenizer, "rgb", images, 4)
    recons, _ = reconstruct(tokenizer, images)
    pairs = zip(recons, images, strict=True)
    naive = [abs((p[c] - p.mean(0)) - (t[c] - t.mean(0))).mean().item() for p, t in pairs for c in range(3)]
    assert results["tokenizer_chroma_error"] == pytest.approx(sum(naive) / len(naive), rel=1e-5)


def test_evaluate_tokenizer_numbers_equal_plain_computations():
    tokenizer = tiny_tokenizer("depth")
    depth = 1.0 + 19.0 * torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    results = evaluate_tokenizer(tokenizer, "depth", depth, 4, batch_size=2, depth_range=FAR)

    codes = tokenizer.encode(depth)
    recon = tokenizer.decode(codes)
    baseline = torch.stack([naive_down_up(image, 4) for image in depth])

    def plain_psnr(prediction):
        return np.mean(
            [10 * math.log10(FAR**2 / ((p - t) ** 2).mean().item()) for p, t in zip(prediction, depth, strict=True)]
        )

    assert results["metric"] == "psnr" and results["data_range"] == FAR
    assert results["tokenizer_psnr"] == pytest.approx(plain_psnr(recon), rel=1e-5)
    assert results["baseline_psnr"] == pytest.approx(plain_psnr(baseline), rel=1e-5)
    assert results["beats_baseline"] == (results["tokenizer_psnr"] > results["baseline_psnr"])
    used = sorted(set(codes.flatten().tolist()))
    assert results["codebook_usage"] == pytest.approx(len(used) / 32)
    frequencies = np.array([(codes == code).sum().item() for code in used]) / codes.numel()
    assert results["perplexity"] == pytest.approx(math.exp(-(frequencies * np.log(frequencies)).sum()), rel=1e-5)


def test_evaluate_semseg_reports_miou_like_a_plain_count():
    tokenizer = tiny_tokenizer("semseg")
    ids = torch.randint(0, 5, (3, SIZE, SIZE), generator=torch.Generator().manual_seed(2))
    results = evaluate_tokenizer(tokenizer, "semseg", ids, 4)

    def plain_miou(predicted):
        ious = []
        for c in range(5):
            union = ((predicted == c) | (ids == c)).sum().item()
            if union:
                ious.append(((predicted == c) & (ids == c)).sum().item() / union)
        return sum(ious) / len(ious)

    recon, _ = reconstruct(tokenizer, ids)
    assert results["metric"] == "miou" and results["data_range"] is None
    assert results["tokenizer_miou"] == pytest.approx(plain_miou(recon))
    assert results["baseline_miou"] == pytest.approx(plain_miou(down_up_baseline(ids, "semseg", 4)))


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of the downsampling factor 4"):
        down_up_baseline(torch.rand(1, 3, 10, 12), "rgb", 4)
    with pytest.raises(ValueError, match="semseg images must be integer class ids"):
        down_up_baseline(torch.rand(1, 8, 8), "semseg", 2)
    with pytest.raises(ValueError, match="unknown image modality 'edges'"):
        down_up_baseline(torch.rand(1, 1, 8, 8), "edges", 2)
    with pytest.raises(ValueError, match="a rgb tokenizer with downsample 4, asked to evaluate depth"):
        evaluate_tokenizer(tiny_tokenizer("rgb"), "depth", torch.rand(1, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="depth PSNR needs depth_range"):
        evaluate_tokenizer(tiny_tokenizer("depth"), "depth", torch.rand(1, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="same, non-zero number of images"):
        write_reconstructions_png(
            tmp_path / "x.png", torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.rand(2, 3, 8, 8)
        )


@pytest.mark.parametrize("modality", ["rgb", "depth", "normal", "semseg"])
def test_reconstructions_png_is_a_rows_by_three_grid(tmp_path, modality):
    originals = held_out_scenes(modality, 4, size=SIZE)
    tokenizer = tiny_tokenizer(modality)
    recons, _ = reconstruct(tokenizer, originals)
    baseline = down_up_baseline(originals, modality, 4)
    path = write_reconstructions_png(tmp_path / "grid.png", originals, recons, baseline, modality)
    width, height = Image.open(path).size
    assert height > width  # 4 rows of 3 panels
    shown = to_viewable_rgb(originals[0], modality)
    assert shown.shape == (SIZE, SIZE, 3) and shown.dtype == np.uint8


def test_semseg_reconstructions_have_a_legend_of_exactly_the_classes_shown():
    originals = torch.zeros(2, 8, 8, dtype=torch.long)
    originals[0, :2] = 2
    recons = originals.clone()
    recons[1, 5:] = 4
    figure = reconstructions_figure(originals, recons, originals, "semseg", ("background", "sphere", "cube"))
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["background", "cube", "class 4"]


def test_depth_reconstructions_share_one_scale_shown_by_a_colour_bar_in_metres():
    near = torch.full((1, 1, 8, 8), 2.0)
    far = torch.full((1, 1, 8, 8), 16.0)
    figure = reconstructions_figure(near, far, near, "depth")
    panels = [axis.get_images()[0].get_array() for axis in figure.axes[:3]]
    assert not np.array_equal(panels[0], panels[1]) and np.array_equal(panels[0], panels[2])  # alone, each is flat
    bar = figure.axes[-1]
    assert bar.get_xlabel() == "depth in metres (near: bright)"
    assert [tick.get_text() for tick in bar.get_xticklabels()][::4] == ["2.0", "16.0"]
    normals = torch.nn.functional.normalize(torch.ones(1, 3, 8, 8), dim=1)
    plain = reconstructions_figure(normals, normals, normals, "normal")
    assert len(plain.axes) == 3 and not plain.legends  # no key for normals
