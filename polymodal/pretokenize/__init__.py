"""Offline pre-tokenization: raw shards -> token shards (4M: image codes per crop, with their crop settings)."""

from polymodal.pretokenize.fourm import (
    CropOptions,
    PretokenizeReport,
    SkippedSample,
    crop_settings,
    pretokenize_4m,
)

__all__ = [
    "CropOptions",
    "PretokenizeReport",
    "SkippedSample",
    "crop_settings",
    "pretokenize_4m",
]
