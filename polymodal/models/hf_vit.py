"""Hugging Face ``ViTModel`` / ``ViTForImageClassification`` weights in and out of our ViT.

Plain state dicts and config dicts only: nothing here imports ``transformers``. A config is a ``ViTConfig`` (anything
with ``to_dict()``) or its dict. Names are those of ``transformers`` 5 (``layers.{i}.attention.q_proj``, ...), which
renames older checkpoints as it loads them.

Our model is the engine's parts: a :class:`~polymodal.models.vit.ViTPreprocessor` (biased patch projection, CLS token,
learned positions), pre-norm blocks of :func:`~polymodal.models.layers.block.build_transformer` (biased LayerNorms,
biased attention projections, GELU MLP), a final LayerNorm, then the CLS token into the classifier (or HF's
``tanh`` pooler). Every tensor maps one to one except two:

* the patch embedding: a Conv2d weight ``[D, C, p, p]`` there, the Linear ``[D, p * p * C]`` here;
* the positions: HF's table ``[1, 1 + N, D]`` covers the CLS token, ours covers the N patches only. The CLS position
  is a constant added to a constant, so it is folded into the CLS token on the way in (``cls + pos[0]``, the very
  sum HF computes) and exported as a zero row on the way out: both directions compute the same numbers.

:func:`key_map` is the table; docs/vision_checkpoints.md explains it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polymodal.checkpoint.weights import check_names, check_shapes, config_as_dict
from polymodal.models.clip import SelectToken
from polymodal.models.hf_vision_config import vision_transformer_shapes
from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.patch_embed import conv_weight_as_linear, linear_weight_as_conv
from polymodal.models.meta import MetaModel, ModuleBlock
from polymodal.models.parts import LinearHead, TransformerTrunk
from polymodal.models.vit import ViTPreprocessor

ViTHead = Literal["classifier", "pooler"] | None
HEADS = ("classifier", "pooler", None)
CLS_TOKEN = ("embeddings.cls_token", "preprocessor.cls_token")
POSITIONS = ("embeddings.position_embeddings", "preprocessor.pos_embed")
PATCH_EMBEDDING = ("embeddings.patch_embeddings.projection.weight", "preprocessor.patch_embed.weight")
# HF module -> ours, without the "weight"/"bias" suffix; every one of them has both
ENCODER_MODULES = {
    "embeddings.patch_embeddings.projection": "preprocessor.patch_embed",
    "layernorm": "trunk.transformer.final_norm",
}
LAYER_MODULES = {  # under layers.{i}. / trunk.transformer.blocks.{i}.
    "layernorm_before": "attn_norm",
    "attention.o_proj": "attn.o_proj",
    "layernorm_after": "mlp_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
QKV_MODULES = {f"attention.{name}_proj": f"attn.{name}_proj" for name in "qkv"}  # biased when config.qkv_bias
HEAD_MODULES = {"classifier": ("classifier", "head.proj"), "pooler": ("pooler.dense", "head.module.0")}
ENCODER_PREFIX = {"classifier": "vit.", "pooler": "", None: ""}  # ViTForImageClassification nests ViTModel as "vit"


def vit_arguments(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The shapes and options of a ``ViTConfig``; a ValueError for what our model cannot do."""
    config = config_as_dict(config)
    activation = config.get("hidden_act", "gelu")
    if activation not in ("gelu", "quick_gelu"):
        raise ValueError(f"ViT hidden_act {activation!r} is not supported (gelu or quick_gelu)")
    for dropout in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if config.get(dropout):
            raise ValueError(f"ViT {dropout}={config[dropout]} is not supported")
    return {
        **vision_transformer_shapes(config),
        "activation": activation,
        "norm_eps": config.get("layer_norm_eps", 1e-12),
        "qkv_bias": config.get("qkv_bias", True),
    }


def _num_labels(config: Mapping[str, Any]) -> int:
    return len(config["id2label"]) if config.get("id2label") else config.get("num_labels", 2)


def _check_head(head: ViTHead, config: Mapping[str, Any]) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "pooler" and config.get("pooler_act", "tanh") != "tanh":
        raise ValueError(f"ViT pooler_act {config['pooler_act']!r} is not supported (tanh)")


def build_from_vit_config(config: Mapping[str, Any] | Any, head: ViTHead = "classifier") -> MetaModel:
    """Our ViT with the shapes of a ``ViTConfig`` (randomly initialised: load converted weights into it).

    ``image`` ``[B, C, H, W]`` -> ``features`` ``[B, 1 + N, D]`` (HF's ``last_hidden_state``), then with
    ``head="classifier"`` (``ViTForImageClassification``) ``logits`` ``[B, num_labels]``, with ``"pooler"``
    (``ViTModel``'s pooler) ``pooled`` ``[B, pooler_output_size]``, with None (``ViTModel(add_pooling_layer=False)``)
    nothing more.
    """
    config = config_as_dict(config)
    _check_head(head, config)
    args = vit_arguments(config)
    dim = args["dim"]
    preprocessor = ViTPreprocessor(
        args["image_size"], args["patch_size"], dim, args["in_channels"], pos_embed="learned", cls_token=True
    )
    transformer = build_transformer(
        dim, args["depth"], args["num_heads"], mlp=args["activation"], ffn_dim=args["ffn_dim"], norm="layernorm",
        norm_eps=args["norm_eps"], rope=None, qkv_bias=args["qkv_bias"], out_bias=True,
    )  # fmt: skip
    trunk = TransformerTrunk(transformer, "tokens", "features", mask_key=None, position_key=None, cache_key=None)
    if head is None:
        return MetaModel(preprocessor=preprocessor, trunk=trunk)
    if head == "classifier":
        output = LinearHead(dim, _num_labels(config), "cls_features", "logits", bias=True)
    else:
        pooler = nn.Sequential(nn.Linear(dim, config.get("pooler_output_size") or dim), nn.Tanh())
        output = ModuleBlock(pooler, "cls_features", "pooled")
    return MetaModel(preprocessor, trunk, SelectToken("features", "cls_features"), output)


def key_map(config: Mapping[str, Any] | Any, head: ViTHead = "classifier") -> dict[str, str]:
    """HF name -> our name for every tensor of a ViT with this config and head."""
    config = config_as_dict(config)
    _check_head(head, config)
    prefix = ENCODER_PREFIX[head]
    names = {f"{prefix}{theirs}": ours for theirs, ours in (CLS_TOKEN, POSITIONS)}
    modules = {f"{prefix}{theirs}": ours for theirs, ours in ENCODER_MODULES.items()}
    if head is not None:
        modules[HEAD_MODULES[head][0]] = HEAD_MODULES[head][1]
    layer_modules = LAYER_MODULES | QKV_MODULES
    for layer in range(config["num_hidden_layers"]):
        for theirs, ours in layer_modules.items():
            modules[f"{prefix}layers.{layer}.{theirs}"] = f"trunk.transformer.blocks.{layer}.{ours}"
    for theirs, ours in modules.items():
        names[f"{theirs}.weight"] = f"{ours}.weight"
        if config.get("qkv_bias", True) or not theirs.endswith(tuple(QKV_MODULES)):
            names[f"{theirs}.bias"] = f"{ours}.bias"
    return names


def vit_to_polymodal(
    state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any, head: ViTHead = "classifier"
) -> dict[str, Tensor]:
    """A ``ViTForImageClassification`` (``head="classifier"``) or ``ViTModel`` (``"pooler"``, or None without the
    pooler) state dict as ours, checked against the shapes ``config`` gives. The CLS position joins the CLS token."""
    names = key_map(config, head)
    check_names("ViT state dict", set(state_dict), set(names))
    converted = {ours: state_dict[theirs] for theirs, ours in names.items()}
    positions = converted[POSITIONS[1]]
    converted[CLS_TOKEN[1]] = converted[CLS_TOKEN[1]] + positions[:, :1]
    converted[POSITIONS[1]] = positions[:, 1:]
    converted[PATCH_EMBEDDING[1]] = conv_weight_as_linear(converted[PATCH_EMBEDDING[1]])
    _check_shapes(converted, config, head)
    return converted


def polymodal_to_vit(
    state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any, head: ViTHead = "classifier"
) -> dict[str, Tensor]:
    """Our state dict as a ``ViTForImageClassification`` / ``ViTModel`` one (the CLS position a zero row)."""
    names = key_map(config, head)
    check_names("state dict", set(state_dict), set(names.values()))
    _check_shapes(state_dict, config, head)
    prefix = ENCODER_PREFIX[head]
    converted = {theirs: state_dict[ours] for theirs, ours in names.items()}
    positions = converted[prefix + POSITIONS[0]]
    converted[prefix + POSITIONS[0]] = torch.cat([torch.zeros_like(positions[:, :1]), positions], dim=1)
    args = vit_arguments(config)
    patch = converted[prefix + PATCH_EMBEDDING[0]]
    converted[prefix + PATCH_EMBEDDING[0]] = linear_weight_as_conv(patch, args["patch_size"], args["in_channels"])
    return converted


def _check_shapes(ours: Mapping[str, Tensor], config: Mapping[str, Any] | Any, head: ViTHead) -> None:
    """Compare with the model ``config`` builds, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build_from_vit_config(config, head)
    check_shapes(ours, {name: tensor.shape for name, tensor in model.state_dict().items()})
