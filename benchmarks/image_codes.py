"""What both pre-tokenization benchmarks share (``pretokenize.py`` for 4M, ``pretokenize_lumina.py``): the rgb_tiny
image tokenizer they encode with, and the judgement of image codes that differ between two sides.

Model: the rgb tokenizer of ``configs/tokenizers/rgb_tiny.yaml`` (64 px -> 8x8 codes, FSQ of 1000 codes), built
in-process and randomly initialised from a fixed seed. Encoding costs the same whatever the weights, so no trained
checkpoint is needed.

Codes: batch 1 and batch N run different convolution kernels whose latents differ by ~1e-6, so a latent whose two
nearest codes are that close can flip. For every differing code the benchmarks print the assignment gap between the
two codes (how much nearer the latent is to one than to the other, in squared distance in the quantizer's assignment
space); gaps below ``TIE_TOLERANCE`` are such float near-ties, a larger gap means the two sides really disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from polymodal.config import instantiate, load_config
from polymodal.tokenizers.image.tokenizer import ImageTokenizer

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tokenizers" / "rgb_tiny.yaml"
SEED = 0  # the tokenizer's random weights and every synthetic input
TIE_TOLERANCE = 1e-4  # assignment gap below which a differing code is a float near-tie


def build_tokenizer() -> tuple[ImageTokenizer, int]:
    """The rgb_tiny tokenizer (random weights from ``SEED``, eval mode) and its image size."""
    config = load_config(CONFIG)
    torch.manual_seed(SEED)
    tokenizer = instantiate(config.model).eval()
    return tokenizer, int(config.constants.image_size)


def assignment_gaps(tokenizer: ImageTokenizer, crops: torch.Tensor, codes: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``| |p - q(code)|^2 - |p - q(other code)|^2 |`` at every position where the code maps ``(n, h·w)`` differ,
    with ``p`` the crop's latent in the quantizer's assignment space and ``q`` a code's latent: ~1e-6 is a float
    near-tie between two codes, not a disagreement."""
    quantizer = tokenizer.quantizer
    rows, positions = np.nonzero(codes != other)
    if rows.size == 0:
        return np.zeros(0)
    with torch.inference_mode():
        latents = tokenizer.encoder(tokenizer.normalization.normalize(crops[torch.from_numpy(rows)]))
        space = quantizer.assignment_space(latents).flatten(2)[torch.arange(rows.size), :, torch.from_numpy(positions)]

        def code_latents(chosen: np.ndarray) -> torch.Tensor:
            ids = torch.from_numpy(chosen[rows, positions].astype(np.int64)).view(-1, 1, 1)
            return quantizer.codes_to_latent(ids).flatten(1)

        first, second = code_latents(codes), code_latents(other)
        gaps = (space - first).square().sum(dim=1) - (space - second).square().sum(dim=1)
        return gaps.abs().numpy()


def codes_line(differing: int, total: int, largest_gap: float, near_ties_only: bool) -> str:
    """``codes identical: True``, or how many differ, the largest assignment gap and the verdict."""
    if differing == 0:
        return "codes identical: True"
    verdict = "float near-ties only" if near_ties_only else "the two sides DISAGREE"
    return (
        f"codes identical: False ({differing} of {total} differ; largest assignment gap {largest_gap:.1e}, "
        f"tolerance {TIE_TOLERANCE:.0e}: {verdict})"
    )
