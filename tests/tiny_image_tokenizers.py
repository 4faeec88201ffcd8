"""Untrained tiny image tokenizers (8x8 px per code, 64-entry codebook) exported like trained ones, for tests that
load them with ``load_tokenizer``: pre-tokenization only needs valid codes. Importable from any test (pytest puts
this folder on ``sys.path`` with tests/conftest.py)."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from polymodal.checkpoint.weights import export_weights
from polymodal.config import instantiate
from polymodal.data.synth.scene import SHAPES

CODEBOOK_SIZE = 64


def tiny_tokenizer_config(modality: str, codebook_size: int = CODEBOOK_SIZE) -> dict:
    """The ``{"model": ...}`` config of the tiny tokenizer of ``modality``."""
    quantizer = {
        "_target_": "polymodal.tokenizers.image.quantizers.VectorQuantizer",
        "dim": 8,
        "codebook_size": codebook_size,
    }
    model = {
        "_target_": "polymodal.tokenizers.image.tokenizer.build_image_tokenizer",
        "modality": modality,
        "downsample": 8,
        "channels": [8, 8, 8, 8],
        "quantizer": quantizer,
    }
    if modality == "semseg":
        model["num_classes"] = len(SHAPES) + 1  # the synthetic world's classes and the ground
    return {"model": model}


def tiny_tokenizer(modality: str, codebook_size: int = CODEBOOK_SIZE) -> torch.nn.Module:
    """The tiny tokenizer of ``modality`` with random weights seeded by the modality: the same on every call."""
    torch.manual_seed(len(modality))
    return instantiate(OmegaConf.create(tiny_tokenizer_config(modality, codebook_size)).model)


def export_tiny_tokenizer(directory: Path, modality: str, codebook_size: int = CODEBOOK_SIZE) -> Path:
    """:func:`tiny_tokenizer` exported with its config into ``directory`` (returned)."""
    config_yaml = OmegaConf.to_yaml(OmegaConf.create(tiny_tokenizer_config(modality, codebook_size)))
    export_weights(tiny_tokenizer(modality, codebook_size), directory, config_yaml)
    return directory
