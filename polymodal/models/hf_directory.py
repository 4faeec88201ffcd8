"""Hugging Face model directories (``config.json``, safetensors weights, tokenizer files) in and out of our models.

Two small tables say which code converts what, as ``"module:function"`` (imported only when used):

* :data:`HF_IMPORTERS`, by the ``model_type`` of a ``config.json``: ``(hf_state_dict, config) -> our state dict``;
* :data:`HF_EXPORTERS`, by the ``_target_`` that builds our model: ``(arguments, state_dict, tokenizer_file)
  -> (config.json dict, hf_state_dict)``, ``arguments`` being the builder's arguments from the run's config.

The engine fills them for its LLM (``LlamaForCausalLM``, ``Qwen3ForCausalLM``); a family adds its own entries with
:func:`register_hf_format` from the module its model is built by, so whatever builds the model registers them.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from polymodal.checkpoint.weights import read_weights
from polymodal.files import usual_permissions

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKEN_ROLES = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}  # our BPE's

HF_IMPORTERS: dict[str, str] = {
    "llama": "polymodal.models.hf_llama:llama_to_polymodal",
    "qwen3": "polymodal.models.hf_llama:llama_to_polymodal",
}
HF_EXPORTERS: dict[str, str] = {"polymodal.models.llm.build_llm": "polymodal.models.hf_llama:export_llm"}


def register_hf_format(model_type: str, importer: str, builder: str, exporter: str) -> None:
    """Let ``model_type`` directories initialise our models (``importer``) and models built by ``builder`` (its
    ``_target_``) be exported as such directories (``exporter``); both are ``"module:function"``."""
    HF_IMPORTERS[model_type] = importer
    HF_EXPORTERS[builder] = exporter


def _resolve(target: str) -> Callable[..., Any]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def is_hf_directory(path: str | Path) -> bool:
    """A directory with a ``config.json`` naming a ``model_type`` (what ``save_pretrained`` writes)."""
    config = Path(path) / HF_CONFIG
    return config.is_file() and "model_type" in json.loads(config.read_text())


def read_hf_directory(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a Hugging Face model directory, in HF's names; single-file or sharded weights."""
    path = Path(path)
    config = json.loads((path / HF_CONFIG).read_text())
    if (path / HF_WEIGHTS).is_file():
        return config, load_file(str(path / HF_WEIGHTS))
    index = path / HF_WEIGHTS_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{path} has no {HF_WEIGHTS} nor {HF_WEIGHTS_INDEX} (only safetensors weights load)")
    state: dict[str, Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state |= load_file(str(path / shard))
    return config, state


def read_hf_weights(path: str | Path) -> dict[str, Tensor]:
    """The weights of a Hugging Face model directory in our names (through its ``model_type``'s importer)."""
    config, state = read_hf_directory(path)
    model_type = config["model_type"]
    if model_type not in HF_IMPORTERS:
        known = sorted(HF_IMPORTERS)
        raise ValueError(f"{path}: no importer for model_type {model_type!r} (known: {known}; a family's model "
                         "type is known once its model is built)")  # fmt: skip
    return _resolve(HF_IMPORTERS[model_type])(state, config)


def read_any_weights(path: str | Path) -> dict[str, Tensor]:
    """Consolidated weights in our names: a Hugging Face model directory, converted, else :func:`read_weights`."""
    return read_hf_weights(path) if Path(path).is_dir() and is_hf_directory(path) else read_weights(path)


def export_hf(
    builder: str, arguments: Mapping[str, Any], state_dict: Mapping[str, Tensor], tokenizer_file: Path | None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, hf_state_dict)`` of a model built by ``builder`` (a ``_target_``) from ``arguments``."""
    if builder not in HF_EXPORTERS:
        raise ValueError(f"no Hugging Face export for models built by {builder} (known: {sorted(HF_EXPORTERS)})")
    return _resolve(HF_EXPORTERS[builder])(arguments, state_dict, tokenizer_file)


def write_hf_directory(
    out_dir: str | Path,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    tokenizer_file: Path | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (contiguous copies: safetensors stores no views), and with
    ``tokenizer_file`` (an HF ``tokenizers`` JSON) ``tokenizer.json`` + ``tokenizer_config.json`` and the ids of its
    special tokens in ``config.json`` (``generate`` stops at ``eos_token_id``), so that ``transformers``'
    ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(out_dir)`` load it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_file is not None:
        config = {**config, **special_token_ids(tokenizer_file)}
    (out_dir / HF_CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    weights = out_dir / HF_WEIGHTS
    save_file({name: tensor.detach().contiguous() for name, tensor in state_dict.items()}, str(weights),
              metadata={"format": "pt"})  # fmt: skip
    if tokenizer_file is not None:
        write_hf_tokenizer(tokenizer_file, out_dir, config.get("max_position_embeddings"))
    for file in out_dir.iterdir():
        usual_permissions(file)
    return out_dir


def _special_token_ids(tokenizer_file: Path) -> dict[str, int]:
    """HF's role (``eos_token``) -> id, for the special tokens of our BPE vocabulary that the tokenizer holds."""
    added = {token["content"]: token["id"] for token in json.loads(Path(tokenizer_file).read_text())["added_tokens"]}
    return {role: added[token] for role, token in SPECIAL_TOKEN_ROLES.items() if token in added}


def special_token_ids(tokenizer_file: Path) -> dict[str, int]:
    """``{"bos_token_id": 1, ...}``: the ``config.json`` entries of the special tokens the tokenizer holds."""
    return {f"{role}_id": token_id for role, token_id in _special_token_ids(tokenizer_file).items()}


def write_hf_tokenizer(tokenizer_file: Path, out_dir: Path, max_length: int | None) -> None:
    """``tokenizer.json`` (our tokenizer's file as it is) and a ``tokenizer_config.json`` naming the special tokens
    of our BPE vocabulary that the tokenizer holds."""
    shutil.copyfile(tokenizer_file, out_dir / HF_TOKENIZER)
    roles = {role: SPECIAL_TOKEN_ROLES[role] for role in _special_token_ids(tokenizer_file)}
    settings: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **roles}
    if max_length:
        settings["model_max_length"] = max_length
    (out_dir / HF_TOKENIZER_CONFIG).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
