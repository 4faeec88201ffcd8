"""Consolidated weights: export to safetensors, and initialise a model from them with key filters and renames."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from polymodal.files import usual_permissions

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("polymodal")

WEIGHTS_FILE = "model.safetensors"


def load_trained_model(path: str | Path, initial: bool = False) -> tuple[nn.Module, str]:
    """``(model, config_yaml)`` from an export dir (``model.safetensors``), a checkpoint dir, or a run dir (its
    newest complete checkpoint). The model is rebuilt from the saved config's ``model`` section. ``initial``: the
    weights the run started from instead of the trained ones (a random-initialisation baseline), see
    :func:`initial_model`."""
    from omegaconf import OmegaConf

    from polymodal.checkpoint.dcp import TRAINER_STATE, Checkpointer, load_model_weights
    from polymodal.config import instantiate
    from polymodal.distributed.env import DistEnv

    path = Path(path)
    exported = (path / WEIGHTS_FILE).is_file()
    if not exported and not (path / TRAINER_STATE).is_file():
        env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        newest = Checkpointer(path / "checkpoints", keep_last=1, env=env).latest()
        if newest is None:
            raise FileNotFoundError(f"{path} is neither an export, a checkpoint nor a run directory with checkpoints")
        path = newest
    config_yaml = (path / "config.yaml").read_text()
    if initial:
        return initial_model(OmegaConf.create(config_yaml)), config_yaml
    model = instantiate(OmegaConf.create(config_yaml).model)
    if exported:
        load_pretrained(model, path, strict=True)
    else:
        load_model_weights(path, model)
    return model, config_yaml


def initial_model(config: DictConfig) -> nn.Module:
    """The model a run of ``config`` starts from: built as the trainer builds it, from ``experiment.seed`` (on the
    meta device and initialised by ``initialize_weights()`` when ``experiment.distributed.meta_init`` is set)."""
    experiment = config.get("experiment") or {}
    meta_init = (experiment.get("distributed") or {}).get("meta_init", False)
    model = build_seeded_model(config.model, int(experiment.get("seed", 0)), meta_init)
    if meta_init:
        materialise_model(model, torch.device("cpu"))
    return model


def build_seeded_model(model_config: Any, seed: int, meta_init: bool) -> nn.Module:
    """``model_config`` instantiated right after seeding with ``seed`` (so every rank, and every rebuild of a run,
    gets the same initial weights); with ``meta_init`` on the meta device, for :func:`materialise_model` once it is
    placed (sharded)."""
    from polymodal.checkpoint.rng import seed_everything
    from polymodal.config import ConfigError, instantiate

    seed_everything(seed)
    with torch.device("meta") if meta_init else contextlib.nullcontext():
        model: nn.Module = instantiate(model_config)
    if meta_init and not hasattr(model, "initialize_weights"):
        name = type(model).__name__
        raise ConfigError(f"meta_init needs {name} to define initialize_weights() (see models/protocol.py)")
    return model


def materialise_model(model: nn.Module, device: torch.device) -> None:
    """Allocate a meta-device model's tensors on ``device`` and fill them with its ``initialize_weights()``."""
    model.to_empty(device=device)
    with torch.no_grad():
        model.initialize_weights()


def export_weights(model: nn.Module, out_dir: Path, config_yaml: str) -> Path:
    """Write ``model.safetensors`` (tied weights stored once) and the run's ``config.yaml`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    # One metadata key: safetensors writes __metadata__ from a hash map, so two keys come out in varying order and
    # the same weights would give different bytes.
    save_model(model, str(weights), metadata={"format": "pt"})
    usual_permissions(weights)
    (out_dir / "config.yaml").write_text(config_yaml)
    return weights


def select_and_rename(
    state: Mapping[str, torch.Tensor],
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep keys matching any ``include`` and no ``exclude`` glob, then apply regex ``rename`` rules in order."""
    selected: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in include):
            continue
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in exclude):
            continue
        for pattern, replacement in (rename or {}).items():
            key = re.sub(pattern, replacement, key)
        if key in selected:
            raise ValueError(f"renaming maps two checkpoint keys onto '{key}'; adjust the rename rules")
        selected[key] = value
    return selected


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of consolidated weights: a ``.safetensors`` file or an export directory (never unpickles)."""
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no weights at {file} (export a checkpoint with `polymodal export`)")
    return load_file(str(file))


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    strict: bool = False,
    reader: Callable[[str | Path], Mapping[str, torch.Tensor]] = read_weights,
) -> tuple[list[str], list[str]]:
    """Initialise ``model`` from consolidated weights (a ``.safetensors`` file or an export directory), which
    ``reader`` reads into our names (the trainer's also converts Hugging Face directories, ``models/hf_directory``).

    Returns the model keys left untouched and the checkpoint keys that found no home. Shape mismatches are errors.
    """
    state = select_and_rename(reader(path), include, exclude, rename)
    if not state:
        raise ValueError(f"the include/exclude filters keep no weights from {path}")
    own = model.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and own[key].shape != value.shape
    ]
    if mismatched:
        raise ValueError("shape mismatch when loading pretrained weights:\n  " + "\n  ".join(mismatched))
    result = model.load_state_dict(state, strict=False)
    loaded = set(state) - set(result.unexpected_keys)
    aliases = tensor_aliases(model)
    missing = [key for key in result.missing_keys if not aliases[key] & loaded]  # tied keys are stored once
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(
            f"weights {path} do not match the model: missing {missing}, unexpected {list(result.unexpected_keys)}"
        )
    log.info(
        "initialised %d tensors from %s (%d model keys untouched, %d checkpoint keys unused)",
        len(loaded),
        path,
        len(missing),
        len(result.unexpected_keys),
    )
    return missing, list(result.unexpected_keys)


def tensor_aliases(model: nn.Module) -> dict[str, set[str]]:
    """Every state-dict key -> the keys naming the same tensor (tied heads, embeddings shared by two modules)."""
    keys_by_tensor: dict[int, set[str]] = defaultdict(set)
    state = model.state_dict(keep_vars=True)
    for key, tensor in state.items():
        keys_by_tensor[id(tensor)].add(key)
    return {key: keys_by_tensor[id(tensor)] for key, tensor in state.items()}


def check_names(what: str, found: set[str], expected: set[str]) -> None:
    """A ValueError naming the first missing and unexpected tensor names of a state dict being converted."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ValueError(
            f"{what}: missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )


def check_shapes(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> None:
    """A ValueError listing every tensor whose shape differs from the one the target model expects."""
    wrong = {
        name: (tuple(found[name].shape), tuple(shape)) for name, shape in expected.items() if found[name].shape != shape
    }
    if wrong:
        raise ValueError(f"shapes (found, expected by the config) differ: {wrong}")


def config_as_dict(config: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    """A foreign model's config as a mapping: a dict (a checkpoint's ``config.json``) as it is, or anything with
    ``to_dict()`` (a ``transformers`` config) as that dict."""
    return config if isinstance(config, Mapping) else config.to_dict()
