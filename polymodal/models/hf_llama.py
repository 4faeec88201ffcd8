"""Hugging Face ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` weights and configs in and out of :func:`build_llm`.

Plain state dicts and config dicts only: nothing here imports ``transformers``. A config is a ``LlamaConfig`` /
``Qwen3Config`` (anything with ``to_dict()``) or its dict (a checkpoint's ``config.json``). Names map one to one and
no tensor is transposed or permuted: HF's RoPE pairs dims by halves, as ours does (``layers/rope.py``).
:func:`decoder_key_map` is the one table of HF decoder names, shared with the families' Llama-derived decoders.

Without QK-norm our LLM is a Llama; with ``qk_norm="rmsnorm"`` (one RMSNorm weight over ``head_dim`` shared by the
heads, before RoPE) it is a Qwen3, whose QK-norms take the model's ``rms_norm_eps`` where ours take 1e-6, so only
``norm_eps=1e-6`` converts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polymodal.checkpoint.weights import check_names, check_shapes, config_as_dict
from polymodal.models.llm import CausalLM, build_llm

GLOBAL_KEYS = {
    "model.embed_tokens.weight": "preprocessor.blocks.0.embedding.weight",
    "model.norm.weight": "trunk.transformer.final_norm.weight",
    "lm_head.weight": "head.proj.weight",
}
LAYER_KEYS = {  # under model.layers.{i}. / trunk.transformer.blocks.{i}.
    "input_layernorm.weight": "attn_norm.weight",  # with res-post-norm (Chameleon's swin norm): the attention output's
    "self_attn.q_proj.weight": "attn.q_proj.weight",
    "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",  # with res-post-norm: the norm of the MLP output
    "mlp.gate_proj.weight": "mlp.fc1.weight",
    "mlp.up_proj.weight": "mlp.fc3.weight",
    "mlp.down_proj.weight": "mlp.fc2.weight",
}
QK_NORM_WEIGHTS = ("weight",)  # Qwen3: q_norm.weight, k_norm.weight
QK_NORM_WEIGHTS_AND_BIASES = ("weight", "bias")  # Chameleon's per-head LayerNorm
QK_NORM_EPS = 1e-6  # our RMSNorm QK-norm's epsilon (layers/attention.py: qk_norms)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def decoder_key_map(num_layers: int, qk_norm_tensors: tuple[str, ...] = (), tied: bool = False) -> dict[str, str]:
    """HF name -> our name for every tensor of a ``num_layers`` Llama-style decoder; ``qk_norm_tensors`` names the
    tensors of ``self_attn.q_norm`` / ``k_norm`` (none without QK-norm); ``tied``: no ``lm_head.weight`` (HF
    stores a tied head once, as the embedding)."""
    layer_keys = dict(LAYER_KEYS)
    for norm in ("q_norm", "k_norm"):
        layer_keys |= {f"self_attn.{norm}.{tensor}": f"attn.{norm}.{tensor}" for tensor in qk_norm_tensors}
    names = {theirs: ours for theirs, ours in GLOBAL_KEYS.items() if not (tied and theirs == "lm_head.weight")}
    for layer in range(num_layers):
        for theirs, ours in layer_keys.items():
            names[f"model.layers.{layer}.{theirs}"] = f"trunk.transformer.blocks.{layer}.{ours}"
    return names


def decoder_refusals(config: Mapping[str, Any]) -> dict[str, bool]:
    """What no decoder of ours expresses, by ``config.json`` key: biases, another activation, attention dropout,
    RoPE scaling (Llama, Qwen3 and Chameleon alike)."""
    rope = dict(config.get("rope_parameters") or {})
    return {
        "hidden_act": config.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(config.get("attention_bias")),
        "mlp_bias": bool(config.get("mlp_bias")),
        "attention_dropout": bool(config.get("attention_dropout")),
        "rope_parameters": rope.get("rope_type", "default") != "default",
        "rope_scaling": bool(config.get("rope_scaling")),  # transformers 4.x
    }


def refuse(what: str, config: Mapping[str, Any], refusals: Mapping[str, bool]) -> None:
    """A ValueError naming the ``config`` settings ``refusals`` marks, if any."""
    if any(refusals.values()):
        settings = {name: config.get(name) for name, refused in refusals.items() if refused}
        raise ValueError(f"{what}: {settings}")


def decoder_arguments(config: Mapping[str, Any], max_seq_len: int, norm_eps: float) -> dict[str, Any]:
    """The decoder shape every builder of ours shares, from an HF decoder config; ``max_seq_len`` and ``norm_eps``
    are the architecture's defaults for keys the config leaves out."""
    rope = dict(config.get("rope_parameters") or {})
    num_heads = config["num_attention_heads"]
    return {
        "vocab_size": config["vocab_size"],
        "dim": config["hidden_size"],
        "depth": config["num_hidden_layers"],
        "num_heads": num_heads,
        "num_kv_heads": config.get("num_key_value_heads") or num_heads,
        "ffn_dim": config["intermediate_size"],
        "max_seq_len": config.get("max_position_embeddings", max_seq_len),
        "rope_theta": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        "norm_eps": config.get("rms_norm_eps", norm_eps),
    }


def decoder_config(arguments: Mapping[str, Any], intermediate_size: int) -> dict[str, Any]:
    """The ``config.json`` keys of a decoder every architecture we export shares (the inverse of
    :func:`decoder_arguments`)."""
    num_heads = arguments["num_heads"]
    return {
        "vocab_size": arguments["vocab_size"],
        "hidden_size": arguments["dim"],
        "intermediate_size": intermediate_size,
        "num_hidden_layers": arguments["depth"],
        "num_attention_heads": num_heads,
        "num_key_value_heads": arguments["num_kv_heads"] or num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": arguments["max_seq_len"],
        "rms_norm_eps": arguments["norm_eps"],
        "rope_parameters": {"rope_type": "default", "rope_theta": float(arguments["rope_theta"])},
        "attention_bias": False,
        "initializer_range": arguments["init_std"],
        "dtype": "float32",
    }


def llm_arguments(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The :func:`build_llm` arguments of a ``LlamaConfig`` / ``Qwen3Config``; a ValueError naming what it cannot
    build (biases, another activation, RoPE scaling, sliding windows, a head dim other than width / heads)."""
    config = config_as_dict(config)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"model_type {model_type!r} is not a Llama or Qwen3 config ({sorted(ARCHITECTURES)})")
    num_heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // num_heads
    qwen3 = model_type == "qwen3"
    refusals = decoder_refusals(config) | {
        "pretraining_tp": config.get("pretraining_tp", 1) != 1,
        "use_sliding_window": bool(config.get("use_sliding_window")),
        "head_dim": head_dim * num_heads != config["hidden_size"],
        "rms_norm_eps": qwen3 and config.get("rms_norm_eps", QK_NORM_EPS) != QK_NORM_EPS,
    }
    refuse(f"{model_type} config settings our LLM cannot express", config, refusals)
    return decoder_arguments(config, max_seq_len=2048, norm_eps=1e-6) | {
        "qk_norm": "rmsnorm" if qwen3 else False,
        "tie_embeddings": bool(config.get("tie_word_embeddings")),
        "init_std": config.get("initializer_range", 0.02),
    }


def build_from_llama_config(config: Mapping[str, Any] | Any) -> CausalLM:
    """Our model with the shapes of a ``LlamaConfig`` / ``Qwen3Config`` (randomly initialised)."""
    return build_llm(**llm_arguments(config))


def llama_config(arguments: Mapping[str, Any], intermediate_size: int) -> dict[str, Any]:
    """The ``config.json`` of a :func:`build_llm` model with these arguments (the defaults fill the rest) and SwiGLU
    width: a ``LlamaForCausalLM``, or a ``Qwen3ForCausalLM`` with ``qk_norm``; a ValueError naming what neither
    expresses."""
    arguments = with_defaults(build_llm, arguments)
    qk_norm = arguments["qk_norm"]
    if qk_norm not in (False, True, "rmsnorm"):
        raise ValueError(f"qk_norm={qk_norm!r}: Llama has no QK-norm and Qwen3's is an RMSNorm shared by the heads")
    if qk_norm and arguments["norm_eps"] != QK_NORM_EPS:
        raise ValueError(f"norm_eps={arguments['norm_eps']}: Qwen3's QK-norms share it, ours use {QK_NORM_EPS}")
    if arguments["res_post_norm"]:
        raise ValueError("res_post_norm: Llama and Qwen3 normalise each branch's input, not its output")
    model_type = "qwen3" if qk_norm else "llama"
    config = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        **decoder_config(arguments, intermediate_size),
        "head_dim": arguments["dim"] // arguments["num_heads"],
        "tie_word_embeddings": bool(arguments["tie_embeddings"]),
        "attention_dropout": 0.0,
    }
    return config | ({"use_sliding_window": False} if qk_norm else {"mlp_bias": False})


def with_defaults(builder: Callable[..., Any], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` completed with ``builder``'s defaults (a run's config names only what it changes)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **arguments}


def swiglu_width(state_dict: Mapping[str, Tensor]) -> int:
    """The SwiGLU hidden width of our decoder's state dict (HF's ``intermediate_size``)."""
    return state_dict[f"trunk.transformer.blocks.0.{LAYER_KEYS['mlp.gate_proj.weight']}"].shape[0]


def _qk_norm_tensors(config: Mapping[str, Any]) -> tuple[str, ...]:
    return QK_NORM_WEIGHTS if config["model_type"] == "qwen3" else ()


def llama_to_polymodal(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> dict[str, Tensor]:
    """A ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` state dict as ours (same tensors, renamed), checked against
    the shapes ``config`` gives. A tied head may be stored (``lm_head.weight``) or not: ours is the embedding
    (under both names, as in our state dict)."""
    config = config_as_dict(config)
    llm_arguments(config)  # a setting our LLM cannot express is named before any tensor name
    tied = bool(config.get("tie_word_embeddings"))
    names = decoder_key_map(config["num_hidden_layers"], _qk_norm_tensors(config), tied=tied)
    found = set(state_dict) - ({"lm_head.weight"} if tied else set())
    check_names(f"{config['model_type']} state dict", found, set(names))
    converted = {ours: state_dict[theirs] for theirs, ours in names.items()}
    if tied:
        converted[GLOBAL_KEYS["lm_head.weight"]] = converted[GLOBAL_KEYS["model.embed_tokens.weight"]]
    _check_shapes(converted, config)
    return converted


def polymodal_to_llama(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | Any) -> dict[str, Tensor]:
    """Our state dict as a ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` one (same tensors, renamed; a tied head
    stored once, as the embedding)."""
    config = config_as_dict(config)
    tied = bool(config.get("tie_word_embeddings"))
    names = decoder_key_map(config["num_hidden_layers"], _qk_norm_tensors(config), tied=tied)
    found = set(state_dict) - ({GLOBAL_KEYS["lm_head.weight"]} if tied else set())
    check_names("state dict", found, set(names.values()))
    _check_shapes({ours: state_dict[ours] for ours in names.values()}, config)
    return {theirs: state_dict[ours] for theirs, ours in names.items()}


def _check_shapes(ours: Mapping[str, Tensor], config: Mapping[str, Any]) -> None:
    """Compare with the model ``config`` builds, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build_from_llama_config(config)
    check_shapes(ours, {name: tensor.shape for name, tensor in model.state_dict().items() if name in ours})


def export_llm(
    arguments: Mapping[str, Any], state_dict: Mapping[str, Tensor], tokenizer_file: Path | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The ``config.json`` and state dict of a :func:`build_llm` model (its ``HF_EXPORTERS`` entry; the tokenizer
    needs nothing of the config)."""
    config = llama_config(arguments, swiglu_width(state_dict))
    return config, polymodal_to_llama(state_dict, config)
