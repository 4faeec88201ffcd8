"""open_clip ``CLIP`` weights in and out of :func:`~polymodal.models.clip.build_clip` models.

Plain state dicts and config dicts only: nothing here imports ``open_clip``. A config is an open_clip model config
dict (``embed_dim``, ``quick_gelu``, ``vision_cfg``, ``text_cfg``: the JSON of its ``model_configs``). open_clip
keeps OpenAI's layout, so besides renaming four kinds of tensors change form:

- attention: one fused ``in_proj_weight`` ``[3D, D]`` (and bias) there, ``q_proj``/``k_proj``/``v_proj`` here;
- projections: ``visual.proj`` and ``text_projection`` ``[D, E]`` multiply from the right there, our Linear
  weights ``[E, D]`` are their transposes;
- the patch embedding: a Conv2d weight ``[D, C, p, p]`` there, the Linear ``[D, p * p * C]`` of our patchifier here;
- the logit scale: 0-dim there, shape ``[1]`` here (FSDP2 cannot shard a 0-dim parameter).

Every other tensor is renamed only (:func:`key_map`). docs/clip.md has the tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from polymodal.checkpoint.weights import check_names, check_shapes
from polymodal.models.clip import CLIP, build_clip
from polymodal.models.layers.patch_embed import conv_weight_as_linear, linear_weight_as_conv

PATCH_EMBEDDING = ("visual.conv1.weight", "models.image_tower.preprocessor.blocks.0.module.weight")
LOGIT_SCALE = ("logit_scale", "models.logit_scale.log_scale")
PROJECTIONS = {
    "visual.proj": "models.image_tower.head.proj.weight",
    "text_projection": "models.text_tower.head.proj.weight",
}
GLOBAL_KEYS = {
    "token_embedding.weight": "models.text_tower.preprocessor.blocks.0.embedding.weight",
    "positional_embedding": "models.text_tower.preprocessor.blocks.1.weight",
    "ln_final.weight": "models.text_tower.trunk.transformer.final_norm.weight",
    "ln_final.bias": "models.text_tower.trunk.transformer.final_norm.bias",
    "visual.class_embedding": "models.image_tower.preprocessor.blocks.1.token",
    "visual.positional_embedding": "models.image_tower.preprocessor.blocks.2.weight",
    "visual.ln_pre.weight": "models.image_tower.preprocessor.blocks.3.module.weight",
    "visual.ln_pre.bias": "models.image_tower.preprocessor.blocks.3.module.bias",
    "visual.ln_post.weight": "models.image_tower.trunk.transformer.final_norm.weight",
    "visual.ln_post.bias": "models.image_tower.trunk.transformer.final_norm.bias",
}
# under {,visual.}transformer.resblocks.{i}. / models.{text,image}_tower.trunk.transformer.blocks.{i}.
LAYER_KEYS = {"ln_1": "attn_norm", "attn.out_proj": "attn.o_proj", "ln_2": "mlp_norm", "mlp.c_fc": "mlp.fc1",
              "mlp.c_proj": "mlp.fc2"}  # fmt: skip
FUSED_QKV = ("attn.in_proj", ("attn.q_proj", "attn.k_proj", "attn.v_proj"))
TOWERS = {"": "text_tower", "visual.": "image_tower"}
TEXT_POOLS = ("argmax", "eos")
# Options of open_clip's towers this model does not have: each must keep its default (falsy) value.
UNSUPPORTED = ("ls_init_value", "patch_dropout", "attentional_pool", "no_ln_pre", "final_ln_after_pool", "embed_cls",
               "no_causal_mask", "proj_bias", "act_kwargs", "norm_kwargs", "block_type", "qk_norm",
               "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc", "timm_model_name",
               "hf_model_name", "output_tokens")  # fmt: skip


def _check_tower(config: Mapping[str, Any], name: str) -> None:
    used = [key for key in UNSUPPORTED if config.get(key)]
    if used:
        raise ValueError(f"open_clip {name} options {used} are not supported")


def clip_arguments(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`build_clip` arguments of an open_clip model config; a ValueError for what the model cannot do.

    The text tower pools at the largest id (``pool_type: argmax``, OpenAI's rule) or at the first ``eos_id``
    (``pool_type: eos``).
    """
    vision, text = config["vision_cfg"], config["text_cfg"]
    if isinstance(vision.get("layers"), list | tuple):
        raise ValueError(
            "open_clip vision_cfg: a ResNet tower (layers per stage) is not converted; build_clip(vision_tower="
            "'resnet') builds one, and polymodal.models.resnet.open_clip_resnet_key names its tensors"
        )
    _check_tower(vision, "vision_cfg")
    _check_tower(text, "text_cfg")
    if vision.get("pool_type", "tok") != "tok" or vision.get("pos_embed_type", "learnable") != "learnable":
        raise ValueError("open_clip vision_cfg: only pool_type 'tok' with learnable positions is supported")
    pool = text.get("pool_type", "argmax")
    if pool not in TEXT_POOLS or text.get("proj_type", "linear") != "linear":
        raise ValueError(f"open_clip text_cfg: pool_type must be one of {TEXT_POOLS} with proj_type 'linear'")
    shared = {"activation": "quick_gelu" if config.get("quick_gelu", False) else "gelu", "norm_eps": 1e-5}
    vision_width, text_width = vision.get("width", 768), text.get("width", 512)
    return {
        "embed_dim": config["embed_dim"],
        "vision": shared
        | {
            "image_size": vision.get("image_size", 224),
            "patch_size": vision.get("patch_size", 16),
            "dim": vision_width,
            "depth": vision.get("layers", 12),
            "num_heads": vision_width // vision.get("head_width", 64),
            "ffn_dim": int(vision_width * vision.get("mlp_ratio", 4.0)),
        },
        "text": shared
        | {
            "vocab_size": text.get("vocab_size", 49408),
            "context_length": text.get("context_length", 77),
            "dim": text_width,
            "depth": text.get("layers", 12),
            "num_heads": text.get("heads", 8),
            "ffn_dim": int(text_width * text.get("mlp_ratio", 4.0)),
            "eot_token_id": text.get("eos_id", 2) if pool == "eos" else None,
        },
    }


def build_from_open_clip_config(config: Mapping[str, Any]) -> CLIP:
    """Our model with the shapes of an open_clip model config (randomly initialised: load converted weights)."""
    return build_clip(**clip_arguments(config))


def _layer_prefixes(text_layers: int, vision_layers: int) -> list[tuple[str, str]]:
    """(open_clip, our) prefix of every transformer layer."""
    return [
        (f"{theirs}transformer.resblocks.{layer}.", f"models.{TOWERS[theirs]}.trunk.transformer.blocks.{layer}.")
        for theirs, layers in (("", text_layers), ("visual.", vision_layers))
        for layer in range(layers)
    ]


def key_map(text_layers: int, vision_layers: int) -> dict[str, str]:
    """open_clip name -> our name for every tensor renamed as it is (all but the fused attention projections, the
    output projections, the patch embedding and the logit scale)."""
    names = dict(GLOBAL_KEYS)
    for theirs, ours in _layer_prefixes(text_layers, vision_layers):
        for their_part, our_part in LAYER_KEYS.items():
            for kind in ("weight", "bias"):
                names[f"{theirs}{their_part}.{kind}"] = f"{ours}{our_part}.{kind}"
    return names


def _depths(config: Mapping[str, Any]) -> tuple[int, int]:
    return config["text_cfg"].get("layers", 12), config["vision_cfg"].get("layers", 12)


def _all_names(config: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Every open_clip and every polymodal tensor name of the model ``config`` describes."""
    names = key_map(*_depths(config))
    theirs, ours = set(names), set(names.values())
    for their_prefix, our_prefix in _layer_prefixes(*_depths(config)):
        for kind in ("weight", "bias"):
            theirs.add(f"{their_prefix}{FUSED_QKV[0]}_{kind}")
            ours.update(f"{our_prefix}{part}.{kind}" for part in FUSED_QKV[1])
    for pair in (PATCH_EMBEDDING, LOGIT_SCALE, *PROJECTIONS.items()):
        theirs.add(pair[0])
        ours.add(pair[1])
    return theirs, ours


def open_clip_to_polymodal(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """An open_clip ``CLIP`` state dict as ours, checked against the names and shapes ``config`` gives."""
    theirs, _ = _all_names(config)
    check_names("open_clip state dict", set(state_dict), theirs)
    converted = {ours: state_dict[name] for name, ours in key_map(*_depths(config)).items()}
    for their_prefix, our_prefix in _layer_prefixes(*_depths(config)):
        for kind in ("weight", "bias"):
            fused = state_dict[f"{their_prefix}{FUSED_QKV[0]}_{kind}"]
            for part, tensor in zip(FUSED_QKV[1], fused.chunk(3, dim=0), strict=True):
                converted[f"{our_prefix}{part}.{kind}"] = tensor
    for name, ours in PROJECTIONS.items():
        converted[ours] = state_dict[name].T
    converted[PATCH_EMBEDDING[1]] = conv_weight_as_linear(state_dict[PATCH_EMBEDDING[0]])
    converted[LOGIT_SCALE[1]] = state_dict[LOGIT_SCALE[0]].reshape(1)
    _check_shapes(converted, config)
    return {name: tensor.contiguous() for name, tensor in converted.items()}


def polymodal_to_open_clip(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Our state dict as an open_clip ``CLIP`` one (loads strictly into the model ``config`` describes)."""
    _, ours = _all_names(config)
    check_names("state dict", set(state_dict), ours)
    _check_shapes(state_dict, config)
    converted = {name: state_dict[our_name] for name, our_name in key_map(*_depths(config)).items()}
    for their_prefix, our_prefix in _layer_prefixes(*_depths(config)):
        for kind in ("weight", "bias"):
            parts = [state_dict[f"{our_prefix}{part}.{kind}"] for part in FUSED_QKV[1]]
            converted[f"{their_prefix}{FUSED_QKV[0]}_{kind}"] = torch.cat(parts, dim=0)
    for name, our_name in PROJECTIONS.items():
        converted[name] = state_dict[our_name].T.contiguous()
    vision = config["vision_cfg"]
    patch = state_dict[PATCH_EMBEDDING[1]]
    converted[PATCH_EMBEDDING[0]] = linear_weight_as_conv(patch, vision.get("patch_size", 16), 3)
    converted[LOGIT_SCALE[0]] = state_dict[LOGIT_SCALE[1]].reshape(())
    return converted


def _check_shapes(ours: Mapping[str, Tensor], config: Mapping[str, Any]) -> None:
    """Compare with the model ``config`` builds, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build_from_open_clip_config(config)
    check_shapes(ours, {name: tensor.shape for name, tensor in model.state_dict().items()})
