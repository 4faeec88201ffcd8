"""Transformer building blocks shared by every model family."""

from polymodal.models.layers.attention import Attention
from polymodal.models.layers.block import Transformer, TransformerBlock, build_transformer
from polymodal.models.layers.drop_path import DropPath
from polymodal.models.layers.init import init_weights
from polymodal.models.layers.masks import (
    causal_mask,
    combine_masks,
    document_mask,
    padding_mask,
    prefix_causal_mask,
)
from polymodal.models.layers.mlp import MLP, QuickGELU, SwiGLU, swiglu_hidden_dim
from polymodal.models.layers.norm import LayerNorm, RMSNorm, norm_factory
from polymodal.models.layers.patch_embed import PatchEmbed, patchify, unpatchify
from polymodal.models.layers.posembed import sincos_1d, sincos_2d
from polymodal.models.layers.rope import AxialRotaryEmbedding2D, RotaryEmbedding

__all__ = [
    "MLP",
    "Attention",
    "AxialRotaryEmbedding2D",
    "DropPath",
    "LayerNorm",
    "PatchEmbed",
    "QuickGELU",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "Transformer",
    "TransformerBlock",
    "build_transformer",
    "causal_mask",
    "combine_masks",
    "document_mask",
    "init_weights",
    "norm_factory",
    "padding_mask",
    "patchify",
    "prefix_causal_mask",
    "sincos_1d",
    "sincos_2d",
    "swiglu_hidden_dim",
    "unpatchify",
]
