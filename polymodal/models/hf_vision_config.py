"""The shape fields every ``transformers`` vision-transformer config names alike (ViT, AIMv2, CLIP's vision tower)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def vision_transformer_shapes(config: Mapping[str, Any]) -> dict[str, int]:
    """``image_size``, ``patch_size``, ``in_channels``, ``dim``, ``depth``, ``num_heads`` and ``ffn_dim`` of a
    vision transformer's ``config.json`` (a mapping)."""
    return {
        "image_size": config["image_size"],
        "patch_size": config["patch_size"],
        "in_channels": config.get("num_channels", 3),
        "dim": config["hidden_size"],
        "depth": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "ffn_dim": config["intermediate_size"],
    }
