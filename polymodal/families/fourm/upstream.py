"""Import an official 4M checkpoint (apple/ml-4m ``FM`` safetensors) into :class:`FourM`.

The file holds the state dict in upstream naming and, in its safetensors metadata, the ``FM`` config: one YAML
string per key (``domains_in``, ``domains_out``, ``image_size``, ``patch_size``, ``norm_bias``, ``act_layer``,
``dim``, ``encoder_depth``, ``decoder_depth``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``, ``proj_bias``,
``mlp_bias``, ``gated_mlp``, ``qk_norm``, ...), parsed with ``yaml.safe_load``. :data:`KEY_MAP` is the one table
from upstream names to ours; docs/fourm_checkpoints.md explains it. Every checkpoint tensor must be claimed by a
rule and every parameter of the model must be filled, else a ValueError names the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from torch import Tensor

from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.families.fourm.model.fourm import FourM

MAX_METADATA_CHARS = 10_000
SINCOS_TOLERANCE = 1e-4  # upstream computes its tables in float32, we in float64


@dataclass(frozen=True)
class KeyRule:
    """Upstream keys matching ``pattern`` go to ``targets`` (regex templates): one target copies, several split the
    tensor evenly along dim 0 (fused qkv / kv). ``zero_bias`` marks upstream's bias-free LayerNorm, whose all-zero
    ``bias`` buffer is dropped when our norm has no bias. ``unused_if_absent`` marks tensors the model may have no
    place for because its forward never uses them (image decoders' token tables), which are then dropped."""

    pattern: str
    targets: tuple[str, ...]
    zero_bias: bool = False
    unused_if_absent: bool = False


def _block_rules(side: str, ours: str, attention: str) -> list[KeyRule]:
    """Norm/attention/MLP rules shared by encoder blocks and decoder blocks (``attention`` = upstream attn name)."""
    block, our_block = rf"{side}\.(\d+)", rf"{ours}.blocks.\1"
    attn_norm = "attn_norm" if side == "encoder" else "self_attn_norm"
    our_attn = "attn" if side == "encoder" else "self_attn"
    return [
        KeyRule(rf"{block}\.norm1\.(weight|bias)", (rf"{our_block}.{attn_norm}.\2",), zero_bias=True),
        KeyRule(
            rf"{block}\.{attention}\.qkv\.(weight|bias)",
            tuple(rf"{our_block}.{our_attn}.{part}_proj.\2" for part in "qkv"),
        ),
        KeyRule(rf"{block}\.{attention}\.proj\.(weight|bias)", (rf"{our_block}.{our_attn}.o_proj.\2",)),
        KeyRule(rf"{block}\.{attention}\.(q_norm|k_norm)\.(weight|bias)", (rf"{our_block}.{our_attn}.\2.\3",), True),
        KeyRule(rf"{block}\.norm2\.(weight|bias)", (rf"{our_block}.mlp_norm.\2",), zero_bias=True),
        KeyRule(rf"{block}\.mlp\.(fc1|fc2|fc3)\.(weight|bias)", (rf"{our_block}.mlp.\2.\3",)),
    ]


MODALITY = r"([^.]+)"
KEY_MAP: list[KeyRule] = [
    *_block_rules("encoder", "encoder", "attn"),
    KeyRule(r"encoder_norm\.(weight|bias)", (r"encoder.final_norm.\1",), zero_bias=True),
    KeyRule(r"decoder_proj_context\.(weight|bias)", (r"context_proj.\1",)),
    *_block_rules("decoder", "decoder", "self_attn"),
    KeyRule(r"decoder\.(\d+)\.query_norm\.(weight|bias)", (r"decoder.blocks.\1.cross_attn_query_norm.\2",), True),
    KeyRule(r"decoder\.(\d+)\.context_norm\.(weight|bias)", (r"decoder.blocks.\1.cross_attn_context_norm.\2",), True),
    KeyRule(r"decoder\.(\d+)\.cross_attn\.q\.(weight|bias)", (r"decoder.blocks.\1.cross_attn.q_proj.\2",)),
    KeyRule(
        r"decoder\.(\d+)\.cross_attn\.kv\.(weight|bias)",
        (r"decoder.blocks.\1.cross_attn.k_proj.\2", r"decoder.blocks.\1.cross_attn.v_proj.\2"),
    ),
    KeyRule(r"decoder\.(\d+)\.cross_attn\.proj\.(weight|bias)", (r"decoder.blocks.\1.cross_attn.o_proj.\2",)),
    KeyRule(
        r"decoder\.(\d+)\.cross_attn\.(q_norm|k_norm)\.(weight|bias)", (r"decoder.blocks.\1.cross_attn.\2.\3",), True
    ),
    KeyRule(r"decoder_norm\.(weight|bias)", (r"decoder.final_norm.\1",), zero_bias=True),
    KeyRule(r"mask_token", ("mask_token",)),
    KeyRule(r"register_tokens", ("register_tokens",)),
    KeyRule(
        rf"encoder_embeddings\.{MODALITY}\.(token_emb\.weight|proj\.weight|mod_emb|pos_emb)",
        (r"encoder_embeddings.\1.\2",),
    ),
    KeyRule(rf"encoder_embeddings\.{MODALITY}\.emb_proj\.(weight|bias)", (r"encoder_embeddings.\1.proj.\2",)),
    KeyRule(rf"decoder_embeddings\.{MODALITY}\.(to_logits\.weight|mod_emb|pos_emb)", (r"decoder_embeddings.\1.\2",)),
    # Sequence decoders embed the previous token; image decoders query with the mask token and have no table.
    KeyRule(
        rf"decoder_embeddings\.{MODALITY}\.token_emb\.weight",
        (r"decoder_embeddings.\1.token_emb.weight",),
        unused_if_absent=True,
    ),
]


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the parsed config metadata of a safetensors file (never unpickles anything)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    config = {}
    for key, text in metadata.items():
        if key == "format":  # safetensors' own marker
            continue
        if len(text) > MAX_METADATA_CHARS:
            raise ValueError(f"{path}: metadata value of {key!r} is {len(text)} characters, over {MAX_METADATA_CHARS}")
        try:
            config[key] = None if text == "None" else yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: metadata value of {key!r} is not valid YAML: {error}") from error
    return tensors, config


REQUIRED_CONFIG = ("domains_in", "domains_out", "image_size", "norm_bias", "act_layer", "dim", "encoder_depth",
                   "decoder_depth", "num_heads")  # fmt: skip
OPTIONAL_CONFIG = {  # upstream FourM defaults
    "patch_size": 16, "mlp_ratio": 4.0, "qkv_bias": True, "proj_bias": True, "mlp_bias": True, "gated_mlp": False,
    "qk_norm": False, "num_register_tokens": 0, "drop_path_rate_encoder": 0.0, "drop_path_rate_decoder": 0.0,
    "shared_drop_path": False, "use_act_checkpoint": False, "decoder_causal_mask": False, "decoder_sep_mask": True,
    "share_modality_embeddings": True,
}  # fmt: skip
UNSUPPORTED = {"decoder_causal_mask": False, "decoder_sep_mask": True, "share_modality_embeddings": True}
ACTIVATION_NAMES = {"GELU": "gelu", "SiLU": "silu", "ReLU": "relu"}


def fourm_arguments(config: Mapping[str, Any], modality_overrides: Mapping[str, Mapping] | None) -> dict[str, Any]:
    """:class:`FourM` arguments from an upstream ``FM`` config (``modality_overrides`` as in the registry)."""
    missing = [key for key in REQUIRED_CONFIG if key not in config]
    unknown = sorted(set(config) - set(REQUIRED_CONFIG) - set(OPTIONAL_CONFIG))
    if missing or unknown:
        raise ValueError(f"4M checkpoint config: missing keys {missing}, unknown keys {unknown}")
    settings = {**OPTIONAL_CONFIG, **config}
    for key, supported in UNSUPPORTED.items():
        if settings[key] != supported:
            raise ValueError(f"4M checkpoint config: {key}={settings[key]!r} is not supported (only {supported})")
    activation = ACTIVATION_NAMES.get(settings["act_layer"])
    if activation is None or (settings["gated_mlp"] and activation != "silu"):
        raise ValueError(f"4M checkpoint config: act_layer={settings['act_layer']!r} with gated_mlp="
                         f"{settings['gated_mlp']} is not supported (GELU/SiLU/ReLU MLPs, SiLU-gated)")  # fmt: skip
    domains_in, domains_out = list(settings["domains_in"]), list(settings["domains_out"])
    names = sorted(set(domains_in) | set(domains_out))
    overrides = {name: {"encoder": name in domains_in, "decoder": name in domains_out} for name in names}
    for name, fields in (modality_overrides or {}).items():
        if name not in overrides:
            raise ValueError(f"modality_overrides names {name!r}, which is not in the checkpoint's domains {names}")
        overrides[name].update(fields)
    return dict(
        modalities=ModalityRegistry.from_config(names, overrides, default_resolution=int(settings["image_size"])),
        dim=settings["dim"],
        encoder_depth=settings["encoder_depth"],
        decoder_depth=settings["decoder_depth"],
        num_heads=settings["num_heads"],
        mlp="swiglu" if settings["gated_mlp"] else "gelu",
        mlp_ratio=settings["mlp_ratio"],
        activation=activation,
        qkv_bias=settings["qkv_bias"],
        proj_bias=settings["proj_bias"],
        mlp_bias=settings["mlp_bias"],
        norm_bias=settings["norm_bias"],
        qk_norm=settings["qk_norm"],
        drop_path_encoder=settings["drop_path_rate_encoder"],
        drop_path_decoder=settings["drop_path_rate_decoder"],
        num_register_tokens=settings["num_register_tokens"],
        tie_embeddings=False,  # the released FM checkpoints hold separate to_logits weights
    )


def convert_state_dict(upstream: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Upstream tensors renamed/split by :data:`KEY_MAP`: ``(ours, droppable)``, ``droppable`` holding the renamed
    tensors that may be dropped when the model has no such parameter (zero norm biases, unused tables); raises on
    unclaimed keys."""
    converted, droppable, unclaimed = {}, {}, []
    for key, tensor in upstream.items():
        match, rule = next(((m, rule) for rule in KEY_MAP if (m := re.fullmatch(rule.pattern, key))), (None, None))
        if rule is None:
            unclaimed.append(key)
            continue
        names = [match.expand(target) for target in rule.targets]
        if (rule.zero_bias and key.endswith(".bias") and not tensor.any()) or rule.unused_if_absent:
            droppable[names[0]] = tensor
        if len(names) == 1:
            converted[names[0]] = tensor
            continue
        if tensor.shape[0] % len(names):
            raise ValueError(f"{key}: dim 0 of shape {tuple(tensor.shape)} does not split into {len(names)} parts")
        converted.update(zip(names, tensor.chunk(len(names), dim=0), strict=True))
    if unclaimed:
        raise ValueError(f"unknown keys in the 4M checkpoint (no rule in KEY_MAP): {sorted(unclaimed)}")
    return converted, droppable


@torch.no_grad()
def load_upstream_state_dict(model: FourM, upstream: Mapping[str, Tensor]) -> None:
    """Fill ``model`` from an upstream-named state dict; raises a ValueError naming unknown, missing, or misshapen
    keys. Sin-cos tables are checked against ours and their overlapping rows taken from the checkpoint."""
    converted, droppable = convert_state_dict(upstream)
    parameters = dict(model.named_parameters(remove_duplicate=False))
    sincos = {name: buffer for name, buffer in model.named_buffers() if name.endswith(".pos_emb")}
    unexpected, misshapen, loaded = [], [], set()
    for name, tensor in converted.items():
        if name in sincos:
            _load_sincos(name, sincos[name], tensor)
            continue
        if name not in parameters:
            if name in droppable:
                continue
            unexpected.append(name)
            continue
        target = parameters[name]
        if target.shape != tensor.shape:
            misshapen.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
            continue
        if id(target) in loaded and not torch.equal(target, tensor.to(target.dtype)):
            raise ValueError(f"{name}: a shared parameter gets different values from its checkpoint names")
        target.copy_(tensor)
        loaded.add(id(target))
    if unexpected or misshapen:
        raise ValueError(f"4M checkpoint does not fit the model: keys the model has no place for {sorted(unexpected)}; "
                         f"shape mismatches {misshapen}")  # fmt: skip
    missing = sorted(name for name, parameter in parameters.items() if id(parameter) not in loaded)
    if missing:
        raise ValueError(f"4M checkpoint lacks model parameters: {missing}")


def _load_sincos(name: str, ours: Tensor, theirs: Tensor) -> None:
    rows = min(ours.shape[1], theirs.shape[1])
    if theirs.dim() != 3 or theirs.shape[-1] != ours.shape[-1]:
        raise ValueError(f"{name}: checkpoint shape {tuple(theirs.shape)} vs model {tuple(ours.shape)}")
    overlap = theirs[:, :rows].to(ours.dtype)
    if not torch.allclose(overlap, ours[:, :rows], atol=SINCOS_TOLERANCE):
        raise ValueError(f"{name}: the checkpoint's fixed sin-cos position embedding differs from ours")
    ours[:, :rows] = overlap


def load_upstream_checkpoint(
    path: str | Path, modality_overrides: Mapping[str, Mapping[str, Any]] | None = None, **model_overrides: Any
) -> FourM:
    """A :class:`FourM` built from the checkpoint's config and filled with its weights.

    ``modality_overrides`` update modality specs (e.g. sequence ``max_tokens``); ``model_overrides`` set model
    arguments the checkpoint does not fix (``num_encoder_tokens``, ``num_decoder_tokens``).
    """
    tensors, config = read_checkpoint(path)
    model = FourM(**fourm_arguments(config, modality_overrides), **model_overrides)
    load_upstream_state_dict(model, tensors)
    return model
