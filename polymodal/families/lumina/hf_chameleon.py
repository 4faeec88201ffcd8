"""Hugging Face ``ChameleonForConditionalGeneration`` weights in and out of :func:`build_chameleon` models.

Plain state dicts and config dicts only: nothing here imports ``transformers``. A config is a ``ChameleonConfig``
(anything with ``to_dict()``) or its dict (a checkpoint's ``config.json``). Names map one to one, no tensor is
transposed or permuted (HF's RoPE pairs dims by halves, as ours does); :func:`key_map` is the engine's Llama table
(:mod:`polymodal.models.hf_llama`) with the per-head QK-norms, and docs/lumina_checkpoints.md explains it. The
checkpoint's ``model.vqmodel.*`` tensors (the VQ-VAE image tokenizer, which a model over pre-tokenized images never
runs) are left out on import and can be passed back on export. ``model.py`` registers :func:`chameleon_to_polymodal`
and :func:`export_chameleon` for ``init_from`` and ``polymodal export --format hf``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from polymodal.checkpoint.weights import check_names, check_shapes, config_as_dict
from polymodal.families.lumina.model import build_chameleon
from polymodal.models.hf_llama import (
    QK_NORM_WEIGHTS_AND_BIASES,
    decoder_arguments,
    decoder_config,
    decoder_key_map,
    decoder_refusals,
    refuse,
    swiglu_width,
    with_defaults,
)
from polymodal.models.llm import CausalLM

log = logging.getLogger(__name__)

VQMODEL_PREFIX = "model.vqmodel."


def chameleon_arguments(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The :func:`build_chameleon` arguments of a ``ChameleonConfig``; a ValueError for what the model cannot do.

    ``num_key_value_heads`` defaults to ``num_attention_heads``; Lumina-mGPT's ``dropout`` becomes
    ``residual_dropout``. The QK-norm epsilon is 1e-5, hard-coded in HF's Chameleon as in ours.
    """
    config = config_as_dict(config)
    refusals = decoder_refusals(config) | {"tie_word_embeddings": bool(config.get("tie_word_embeddings"))}
    refuse("Chameleon config settings the model does not support", config, refusals)
    return decoder_arguments(config, max_seq_len=4096, norm_eps=1e-5) | {
        "swin_norm": bool(config.get("swin_norm")),
        "residual_dropout": config.get("dropout", 0.0),
    }


def build_from_chameleon_config(config: Mapping[str, Any] | Any) -> CausalLM:
    """Our model with the shapes of a ``ChameleonConfig`` (randomly initialised: load converted weights into it)."""
    return build_chameleon(**chameleon_arguments(config))


def key_map(num_layers: int) -> dict[str, str]:
    """HF name -> our name for every tensor of a ``num_layers`` Chameleon, VQ-VAE aside: the Llama names plus the
    weight and bias of each per-head QK-norm."""
    return decoder_key_map(num_layers, QK_NORM_WEIGHTS_AND_BIASES)


def chameleon_to_polymodal(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> dict[str, Tensor]:
    """A ``ChameleonForConditionalGeneration`` state dict as ours (same tensors, renamed), checked against the
    shapes ``config`` gives; its ``model.vqmodel.*`` tensors are left out (logged once, at INFO)."""
    chameleon_arguments(config)  # a setting the model cannot express is named before any tensor name
    names = key_map(config_as_dict(config)["num_hidden_layers"])
    vqmodel = [name for name in state_dict if name.startswith(VQMODEL_PREFIX)]
    check_names("Chameleon state dict", set(state_dict) - set(vqmodel), set(names))
    converted = {ours: state_dict[theirs] for theirs, ours in names.items()}
    _check_shapes(converted, config)
    if vqmodel:
        log.info("left out the %d %s* tensors (the VQ-VAE image tokenizer)", len(vqmodel), VQMODEL_PREFIX)
    return converted


def polymodal_to_chameleon(
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any] | Any,
    vqmodel: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Our state dict as a ``ChameleonForConditionalGeneration`` one (same tensors, renamed). ``vqmodel``: the
    ``model.vqmodel.*`` tensors to add (e.g. those of the imported checkpoint), without which HF's model, which
    always holds a VQ-VAE, loads the result only with ``strict=False``."""
    names = key_map(config_as_dict(config)["num_hidden_layers"])
    check_names("state dict", set(state_dict), set(names.values()))
    _check_shapes(state_dict, config)
    foreign = [name for name in vqmodel or {} if not name.startswith(VQMODEL_PREFIX)]
    if foreign:
        raise ValueError(f"vqmodel holds names outside {VQMODEL_PREFIX}*: {sorted(foreign)[:5]}")
    return {theirs: state_dict[ours] for theirs, ours in names.items()} | dict(vqmodel or {})


def _check_shapes(ours: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> None:
    """Compare with the model ``config`` builds, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build_from_chameleon_config(config)
    check_shapes(ours, {name: tensor.shape for name, tensor in model.state_dict().items()})


def chameleon_config(arguments: Mapping[str, Any], intermediate_size: int, vocabulary: Mapping[str, int]) -> dict:
    """The ``config.json`` of a :func:`build_chameleon` model with these arguments (the defaults fill the rest) and
    SwiGLU width. ``vocabulary`` (token -> id; the text tokenizer's) becomes HF's ``vocabulary_map``: it names no
    image code ``IMGIMG*``, so HF masks no logits, as ours never does. ``vq_config`` is left to HF's default: the
    VQ-VAE is not ours to export (see docs/hf_export.md)."""
    arguments = with_defaults(build_chameleon, arguments)
    if arguments["qk_norm"] != "per_head_layernorm":
        raise ValueError(f"qk_norm={arguments['qk_norm']!r}: Chameleon's QK-norm is a LayerNorm per head")
    config = {
        "architectures": ["ChameleonForConditionalGeneration"],
        "model_type": "chameleon",
        **decoder_config(arguments, intermediate_size),
        "swin_norm": bool(arguments["swin_norm"]),
        "tie_word_embeddings": False,
        "vocabulary_map": dict(vocabulary),
    }
    return config | ({"dropout": arguments["residual_dropout"]} if arguments["residual_dropout"] else {})


def export_chameleon(
    arguments: Mapping[str, Any], state_dict: Mapping[str, Tensor], tokenizer_file: Path | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The ``config.json`` and state dict (no ``model.vqmodel.*``) of a :func:`build_chameleon` model; its
    ``vocabulary_map`` is the vocabulary of ``tokenizer_file`` (the run's text tokenizer), if any."""
    vocabulary = Tokenizer.from_file(str(tokenizer_file)).get_vocab() if tokenizer_file else {}
    config = chameleon_config(arguments, swiglu_width(state_dict), vocabulary)
    return config, polymodal_to_chameleon(state_dict, config)
