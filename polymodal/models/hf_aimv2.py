"""Hugging Face ``Aimv2VisionModel`` weights in and out of the AIMv2 image encoder built from our parts.

Plain state dicts and config dicts only: nothing here imports ``transformers``. A config is an ``Aimv2VisionConfig``
(anything with ``to_dict()``) or its dict.

The encoder: a :class:`~polymodal.models.vit.ViTPreprocessor` (biased patch projection, RMSNorm on the patches,
learned positions, no CLS token), the RMSNorm pre-norm SwiGLU blocks of
:func:`~polymodal.models.layers.block.build_transformer` (no RoPE; attention biases, output projection included, as
the config's ``qkv_bias`` says), a final RMSNorm, then with ``use_head`` AIMv2's attentive pooling: one learned
query attends the un-normalised features (:class:`~polymodal.models.pooling.AttentivePooling` with
``token_norm=False``). Every tensor maps one to one except:

* the patch embedding: a Conv2d weight ``[D, C, p, p]`` there, the Linear ``[D, p * p * C]`` here;
* the position table: ``[N, D]`` there, ``[1, N, D]`` here;
* the pooling query: HF's head uses its ``cls_token`` as the query as it is, ours passes its query through a
  projection ``q_proj``. On the way in the query is the ``cls_token`` and ``q_proj`` the identity (exact); on the way
  out the ``cls_token`` is ``q_proj(query)``, the very product our forward computes.

:func:`key_map` is the table; docs/vision_checkpoints.md explains it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.checkpoint.weights import check_names, check_shapes, config_as_dict
from polymodal.models.hf_vision_config import vision_transformer_shapes
from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.patch_embed import conv_weight_as_linear, linear_weight_as_conv
from polymodal.models.meta import MetaModel, ModuleBlock
from polymodal.models.parts import TransformerTrunk
from polymodal.models.pooling import AttentivePooling
from polymodal.models.vit import ViTPreprocessor

PATCH_EMBEDDING = ("embeddings.patch_embed.weight", "preprocessor.patch_embed.weight")
POSITIONS = ("embeddings.position_embedding.weight", "preprocessor.pos_embed")
POOLING_QUERY = ("head.cls_token", "head.module.query")
QUERY_PROJECTION = "head.module.attention.q_proj"  # ours only: the identity for an imported head
GLOBAL_KEYS = {
    "embeddings.patch_embed.bias": "preprocessor.patch_embed.bias",
    "embeddings.rms_norm.weight": "preprocessor.patch_norm.weight",
    "rms_norm.weight": "trunk.transformer.final_norm.weight",
    PATCH_EMBEDDING[0]: PATCH_EMBEDDING[1],
    POSITIONS[0]: POSITIONS[1],
}
HEAD_KEYS = {
    POOLING_QUERY[0]: POOLING_QUERY[1],
    "head.output_proj.weight": "head.module.attention.o_proj.weight",
    "head.output_proj.bias": "head.module.attention.o_proj.bias",
}
HEAD_PROJECTIONS = {"head.k_proj": "head.module.attention.k_proj", "head.v_proj": "head.module.attention.v_proj"}
# under encoder.layers.{i}. / trunk.transformer.blocks.{i}.
LAYER_NORMS = {"rms_norm1": "attn_norm", "rms_norm2": "mlp_norm"}
LAYER_MLP = {"ffn.gate_proj": "mlp.fc1", "ffn.up_proj": "mlp.fc3", "ffn.down_proj": "mlp.fc2"}  # no biases
LAYER_ATTENTION = {f"attention.{name}_proj": f"attn.{name}_proj" for name in "qkv"} | {
    "attention.out_proj": "attn.o_proj"
}


def aimv2_arguments(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The shapes and options of an ``Aimv2VisionConfig``; a ValueError for what our encoder cannot do."""
    config = config_as_dict(config)
    unsupported = {
        "hidden_act": config.get("hidden_act", "silu") != "silu",
        "mlp_bias": bool(config.get("mlp_bias")),
        "is_native": bool(config.get("is_native")),  # sin-cos positions computed for any image size
        "attention_dropout": bool(config.get("attention_dropout")),
    }
    for option, refused in unsupported.items():
        if refused:
            raise ValueError(f"AIMv2 {option}={config[option]!r} is not supported")
    return {
        **vision_transformer_shapes(config),
        "norm_eps": config.get("rms_norm_eps", 1e-5),
        "qkv_bias": bool(config.get("qkv_bias", False)),
        "use_head": bool(config.get("use_head", True)),
    }


def build_from_aimv2_config(config: Mapping[str, Any] | Any) -> MetaModel:
    """Our AIMv2 encoder with the shapes of an ``Aimv2VisionConfig`` (randomly initialised: load converted weights).

    ``image`` ``[B, C, H, W]`` -> ``features`` ``[B, N, D]`` (HF's ``last_hidden_state``) and, with ``use_head``,
    ``pooled`` ``[B, D]`` (HF's ``pooler_output``).
    """
    args = aimv2_arguments(config)
    dim, num_heads, qkv_bias, eps = args["dim"], args["num_heads"], args["qkv_bias"], args["norm_eps"]
    preprocessor = ViTPreprocessor(
        args["image_size"], args["patch_size"], dim, args["in_channels"], pos_embed="learned", patch_norm="rmsnorm",
        patch_norm_eps=eps,
    )  # fmt: skip
    transformer = build_transformer(
        dim, args["depth"], num_heads, mlp="swiglu", ffn_dim=args["ffn_dim"], norm="rmsnorm", norm_eps=eps, rope=None,
        qkv_bias=qkv_bias, out_bias=qkv_bias,
    )  # fmt: skip
    trunk = TransformerTrunk(transformer, "tokens", "features", mask_key=None, position_key=None, cache_key=None)
    head = None
    if args["use_head"]:
        head = ModuleBlock(AttentivePooling(dim, num_heads, qkv_bias=qkv_bias, token_norm=False), "features", "pooled")
    return MetaModel(preprocessor=preprocessor, trunk=trunk, head=head)


def key_map(config: Mapping[str, Any] | Any) -> dict[str, str]:
    """HF name -> our name for every tensor of an ``Aimv2VisionModel`` with this config (our pooling head's
    ``q_proj`` has no HF counterpart: see the module docstring)."""
    args = aimv2_arguments(config)
    kinds = ("weight", "bias") if args["qkv_bias"] else ("weight",)
    names = dict(GLOBAL_KEYS)
    if args["use_head"]:
        names |= HEAD_KEYS
        names |= {f"{theirs}.{kind}": f"{ours}.{kind}" for theirs, ours in HEAD_PROJECTIONS.items() for kind in kinds}
    for layer in range(args["depth"]):
        theirs, ours = f"encoder.layers.{layer}.", f"trunk.transformer.blocks.{layer}."
        for hf_module, module in (LAYER_NORMS | LAYER_MLP).items():
            names[f"{theirs}{hf_module}.weight"] = f"{ours}{module}.weight"
        for hf_module, module in LAYER_ATTENTION.items():
            names |= {f"{theirs}{hf_module}.{kind}": f"{ours}{module}.{kind}" for kind in kinds}
    return names


def _query_projection_keys(config: Mapping[str, Any] | Any) -> set[str]:
    args = aimv2_arguments(config)
    if not args["use_head"]:
        return set()
    return {f"{QUERY_PROJECTION}.weight"} | ({f"{QUERY_PROJECTION}.bias"} if args["qkv_bias"] else set())


def aimv2_to_polymodal(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> dict[str, Tensor]:
    """An ``Aimv2VisionModel`` state dict as ours, checked against the shapes ``config`` gives."""
    names = key_map(config)
    check_names("AIMv2 state dict", set(state_dict), set(names))
    converted = {ours: state_dict[theirs] for theirs, ours in names.items()}
    converted[POSITIONS[1]] = converted[POSITIONS[1]][None]
    converted[PATCH_EMBEDDING[1]] = conv_weight_as_linear(converted[PATCH_EMBEDDING[1]])
    if POOLING_QUERY[1] in converted:
        query = converted[POOLING_QUERY[1]]
        dim = query.shape[-1]
        converted[f"{QUERY_PROJECTION}.weight"] = torch.eye(dim, dtype=query.dtype, device=query.device)
        if f"{QUERY_PROJECTION}.bias" in _query_projection_keys(config):
            converted[f"{QUERY_PROJECTION}.bias"] = query.new_zeros(dim)
    _check_shapes(converted, config)
    return converted


def polymodal_to_aimv2(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> dict[str, Tensor]:
    """Our state dict as an ``Aimv2VisionModel`` one (the pooling query passed through its projection)."""
    names = key_map(config)
    projection = _query_projection_keys(config)
    check_names("state dict", set(state_dict), set(names.values()) | projection)
    _check_shapes(state_dict, config)
    converted = {theirs: state_dict[ours] for theirs, ours in names.items()}
    converted[POSITIONS[0]] = converted[POSITIONS[0]][0]
    args = aimv2_arguments(config)
    patch = converted[PATCH_EMBEDDING[0]]
    converted[PATCH_EMBEDDING[0]] = linear_weight_as_conv(patch, args["patch_size"], args["in_channels"])
    if projection:
        weight, bias = state_dict[f"{QUERY_PROJECTION}.weight"], state_dict.get(f"{QUERY_PROJECTION}.bias")
        with torch.no_grad():
            converted[POOLING_QUERY[0]] = F.linear(converted[POOLING_QUERY[0]], weight, bias)
    return converted


def _check_shapes(ours: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> None:
    """Compare with the model ``config`` builds, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build_from_aimv2_config(config)
    check_shapes(ours, {name: tensor.shape for name, tensor in model.state_dict().items()})
