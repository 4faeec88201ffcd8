"""Held-out synthetic scenes for evaluation: rendered in memory from a seed that training data never uses."""

from __future__ import annotations

import torch
from torch import Tensor

from polymodal.data.synth.render import render_scenes
from polymodal.tokenizers.image.tokenizer import MODALITIES

HELD_OUT_SEED = 10_000  # training shards are rendered from small seeds; these scenes are never trained on


def held_out_scenes(modality: str, num_images: int, size: int = 64, seed: int = HELD_OUT_SEED) -> Tensor:
    """``num_images`` rendered scenes of ``modality`` in natural units (rgb as float in [0, 1])."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown image modality {modality!r}; expected one of {MODALITIES}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    scenes = render_scenes(seed, num_images, size, f"rendering {num_images} held-out scenes")
    images = torch.stack([scene[modality] for scene in scenes])
    return images.float() / 255.0 if modality == "rgb" else images
