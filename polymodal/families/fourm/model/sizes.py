"""Named 4M sizes and variants (upstream's ``fm_<size>_<E>e_<D>d_<variant>``) and the config-facing builder.

Sizes (head dim 64): tiny 384 wide 6+6 layers, small 512 8+8, base 768 12+12 (4M-B), large 1024 24+24 (4M-L),
xlarge 2048 24+24 (4M-XL). Variants: ``gelu`` (biases everywhere, LayerNorm with bias, GELU MLP),
``swiglu_nobias`` (no biases, bias-free LayerNorm, SwiGLU; every released 4M model), ``swiglu_qknorm_nobias``
(adds a bias-free LayerNorm on queries and keys).

From YAML::

    model:
      _target_: polymodal.families.fourm.model.build_fourm
      size: tiny
      modalities:
        names: [caption, tok_rgb@64]
        overrides: {tok_rgb@64: {vocab_size: 256, patch_size: 8}, caption: {vocab_size: 1000, max_tokens: 32}}
      num_encoder_tokens: 64
      num_decoder_tokens: 64
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.families.fourm.model.fourm import FourM


@dataclass(frozen=True)
class FourMSize:
    dim: int
    encoder_depth: int
    decoder_depth: int
    num_heads: int


SIZES: dict[str, FourMSize] = {
    "tiny": FourMSize(384, 6, 6, 6),
    "small": FourMSize(512, 8, 8, 8),
    "base": FourMSize(768, 12, 12, 12),
    "large": FourMSize(1024, 24, 24, 16),
    "xlarge": FourMSize(2048, 24, 24, 32),
}

_NO_BIAS = dict(mlp="swiglu", qkv_bias=False, proj_bias=False, mlp_bias=False, norm_bias=False)
VARIANTS: dict[str, dict[str, Any]] = {
    "gelu": dict(mlp="gelu", activation="gelu", qkv_bias=True, proj_bias=True, mlp_bias=True, norm_bias=True),
    "swiglu_nobias": dict(_NO_BIAS, qk_norm=False),
    "swiglu_qknorm_nobias": dict(_NO_BIAS, qk_norm=True),
}


def as_registry(modalities: ModalityRegistry | Mapping[str, Any] | Sequence[str]) -> ModalityRegistry:
    """A registry from a registry, a list of names, or ``{"names": [...], "overrides": {name: {field: value}},
    "default_resolution": 224}`` (the last two optional)."""
    if isinstance(modalities, ModalityRegistry):
        return modalities
    if isinstance(modalities, Mapping):
        unknown = set(modalities) - {"names", "overrides", "default_resolution"}
        if unknown or "names" not in modalities:
            raise ValueError(
                "modalities must hold 'names' and optionally 'overrides', 'default_resolution'; "
                f"got {sorted(modalities)}"
            )
        return ModalityRegistry.from_config(
            list(modalities["names"]), modalities.get("overrides"), modalities.get("default_resolution", 224)
        )
    if isinstance(modalities, str):
        raise ValueError(f"modalities must be a list of names, got the string {modalities!r}")
    return ModalityRegistry.from_config(list(modalities))


def build_fourm(
    size: str,
    modalities: ModalityRegistry | Mapping[str, Any] | Sequence[str],
    variant: str = "swiglu_nobias",
    **overrides: Any,
) -> FourM:
    """Build an initialised :class:`FourM` of a named ``size`` and ``variant``; ``overrides`` replace any of its
    arguments (``dim``, ``num_encoder_tokens``, ``drop_path_encoder``, ``tie_embeddings``, ...)."""
    if size not in SIZES:
        raise ValueError(f"unknown 4M size {size!r}; known: {sorted(SIZES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown 4M variant {variant!r}; known: {sorted(VARIANTS)}")
    settings = {**vars(SIZES[size]), **VARIANTS[variant], **overrides}
    return FourM(as_registry(modalities), **settings)
