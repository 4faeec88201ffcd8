"""Trained image tokenizers from disk: a training checkpoint, a run directory or an export directory."""

from __future__ import annotations

from pathlib import Path

from polymodal.checkpoint.weights import load_trained_model
from polymodal.tokenizers.image.tokenizer import ImageTokenizer


def load_image_tokenizer(checkpoint: str | Path) -> ImageTokenizer:
    """An :class:`ImageTokenizer` in eval mode from a training checkpoint, a run directory (its newest checkpoint)
    or an export directory (``config.yaml`` + ``model.safetensors``)."""
    model, _ = load_trained_model(checkpoint)
    if not isinstance(model, ImageTokenizer):
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}, not an ImageTokenizer")
    return model.eval()
