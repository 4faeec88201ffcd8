"""Hugging Face ``CLIPModel`` weights in and out of :func:`~polymodal.models.clip.build_clip` models.

Plain state dicts and config dicts only: nothing here imports ``transformers``. A config is a ``CLIPConfig``
(anything with ``to_dict()``) or its dict (a checkpoint's ``config.json``). Names map one to one; two tensors change
shape: the patch embedding (a Conv2d weight ``[D, C, p, p]`` there, the Linear ``[D, p * p * C]`` of our one
patchifier here) and the logit scale (a 0-dim tensor there, shape ``[1]`` here because FSDP2 cannot shard a 0-dim
parameter). :func:`key_map` is the one table; docs/clip.md explains it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from polymodal.checkpoint.weights import check_names, check_shapes, config_as_dict
from polymodal.models.clip import CLIP, build_clip
from polymodal.models.layers.patch_embed import conv_weight_as_linear, linear_weight_as_conv

LEGACY_EOS_TOKEN_ID = 2  # HF's CLIP configs from before its EOS fix: pool at the largest id (OpenAI's rule)
LOGIT_SCALE = ("logit_scale", "models.logit_scale.log_scale")
PATCH_EMBEDDING = (
    "vision_model.embeddings.patch_embedding.weight",
    "models.image_tower.preprocessor.blocks.0.module.weight",
)
GLOBAL_KEYS = {
    "text_model.embeddings.token_embedding.weight": "models.text_tower.preprocessor.blocks.0.embedding.weight",
    "text_model.embeddings.position_embedding.weight": "models.text_tower.preprocessor.blocks.1.weight",
    "text_model.final_layer_norm.weight": "models.text_tower.trunk.transformer.final_norm.weight",
    "text_model.final_layer_norm.bias": "models.text_tower.trunk.transformer.final_norm.bias",
    "text_projection.weight": "models.text_tower.head.proj.weight",
    "vision_model.embeddings.patch_embedding.weight": PATCH_EMBEDDING[1],
    "vision_model.embeddings.class_embedding": "models.image_tower.preprocessor.blocks.1.token",
    "vision_model.embeddings.position_embedding.weight": "models.image_tower.preprocessor.blocks.2.weight",
    "vision_model.pre_layrnorm.weight": "models.image_tower.preprocessor.blocks.3.module.weight",
    "vision_model.pre_layrnorm.bias": "models.image_tower.preprocessor.blocks.3.module.bias",
    "vision_model.post_layernorm.weight": "models.image_tower.trunk.transformer.final_norm.weight",
    "vision_model.post_layernorm.bias": "models.image_tower.trunk.transformer.final_norm.bias",
    "visual_projection.weight": "models.image_tower.head.proj.weight",
}
# under {text,vision}_model.encoder.layers.{i}. / models.{text,image}_tower.trunk.transformer.blocks.{i}.
LAYER_KEYS = {
    "layer_norm1": "attn_norm",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.o_proj",
    "layer_norm2": "mlp_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
TOWERS = {"text_model": "text_tower", "vision_model": "image_tower"}


def _tower_arguments(config: Mapping[str, Any]) -> dict[str, Any]:
    activation = config.get("hidden_act", "quick_gelu")
    if activation not in ("gelu", "quick_gelu"):
        raise ValueError(f"CLIP hidden_act {activation!r} is not supported (gelu or quick_gelu)")
    if config.get("attention_dropout"):
        raise ValueError(f"CLIP attention_dropout={config['attention_dropout']} is not supported")
    return {
        "dim": config["hidden_size"],
        "depth": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "ffn_dim": config["intermediate_size"],
        "activation": activation,
        "norm_eps": config.get("layer_norm_eps", 1e-5),
    }


def clip_arguments(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The :func:`build_clip` arguments of a ``CLIPConfig``; a ValueError for what the model cannot do.

    The text tower pools at the first ``eos_token_id``, or at the largest id when the config carries the legacy
    ``eos_token_id`` 2 (as Hugging Face does).
    """
    config = config_as_dict(config)
    text, vision = config_as_dict(config["text_config"]), config_as_dict(config["vision_config"])
    eos = text.get("eos_token_id", LEGACY_EOS_TOKEN_ID)
    return {
        "embed_dim": config["projection_dim"],
        "vision": _tower_arguments(vision)
        | {
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "in_channels": vision.get("num_channels", 3),
        },
        "text": _tower_arguments(text)
        | {
            "vocab_size": text["vocab_size"],
            "context_length": text["max_position_embeddings"],
            "eot_token_id": None if eos == LEGACY_EOS_TOKEN_ID else eos,
        },
    }


def build_from_clip_config(config: Mapping[str, Any] | Any) -> CLIP:
    """Our model with the shapes of a ``CLIPConfig`` (randomly initialised: load converted weights into it)."""
    return build_clip(**clip_arguments(config))


def key_map(text_layers: int, vision_layers: int) -> dict[str, str]:
    """HF name -> our name for every tensor of a CLIP with these tower depths."""
    names = dict(GLOBAL_KEYS)
    names[LOGIT_SCALE[0]] = LOGIT_SCALE[1]
    for hf_tower, layers in (("text_model", text_layers), ("vision_model", vision_layers)):
        for layer in range(layers):
            for theirs, ours in LAYER_KEYS.items():
                for kind in ("weight", "bias"):
                    hf_name = f"{hf_tower}.encoder.layers.{layer}.{theirs}.{kind}"
                    names[hf_name] = f"models.{TOWERS[hf_tower]}.trunk.transformer.blocks.{layer}.{ours}.{kind}"
    return names


def _depths(config: Mapping[str, Any] | Any) -> tuple[int, int]:
    config = config_as_dict(config)
    text, vision = config_as_dict(config["text_config"]), config_as_dict(config["vision_config"])
    return text["num_hidden_layers"], vision["num_hidden_layers"]


def clip_to_polymodal(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> dict[str, Tensor]:
    """A ``CLIPModel`` state dict as ours (same tensors, renamed; the logit scale reshaped to ``[1]``), checked
    against the shapes ``config`` gives."""
    names = key_map(*_depths(config))
    check_names("CLIP state dict", set(state_dict), set(names))
    converted = {ours: state_dict[theirs] for theirs, ours in names.items()}
    converted[LOGIT_SCALE[1]] = converted[LOGIT_SCALE[1]].reshape(1)
    converted[PATCH_EMBEDDING[1]] = conv_weight_as_linear(converted[PATCH_EMBEDDING[1]])
    _check_shapes(converted, config)
    return converted


def polymodal_to_clip(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> dict[str, Tensor]:
    """Our state dict as a ``CLIPModel`` one (same tensors, renamed; the logit scale back to 0-dim)."""
    names = key_map(*_depths(config))
    check_names("state dict", set(state_dict), set(names.values()))
    _check_shapes(state_dict, config)
    converted = {theirs: state_dict[ours] for theirs, ours in names.items()}
    converted[LOGIT_SCALE[0]] = converted[LOGIT_SCALE[0]].reshape(())
    vision = config_as_dict(config_as_dict(config)["vision_config"])
    patch = converted[PATCH_EMBEDDING[0]]
    converted[PATCH_EMBEDDING[0]] = linear_weight_as_conv(patch, vision["patch_size"], vision.get("num_channels", 3))
    return converted


def _check_shapes(ours: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> None:
    """Compare with the model ``config`` builds, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build_from_clip_config(config)
    check_shapes(ours, {name: tensor.shape for name, tensor in model.state_dict().items()})
