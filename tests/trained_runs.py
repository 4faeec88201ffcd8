"""Run and export directories of freshly built models, laid out as the trainer and ``polymodal export`` write them,
for tests of what reads them (generation, ``load_run``). Importable from any test, like tiny_image_tokenizers."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from polymodal.checkpoint.dcp import Checkpointer
from polymodal.checkpoint.weights import export_weights
from polymodal.config import instantiate
from polymodal.distributed.env import DistEnv


def _built(model_config: dict, sections: dict | None = None) -> tuple[torch.nn.Module, str]:
    config_yaml = OmegaConf.to_yaml(OmegaConf.create({"model": model_config, **(sections or {})}))
    torch.manual_seed(0)
    return instantiate(OmegaConf.create(config_yaml).model), config_yaml


def export(directory: Path, model_config: dict, sections: dict | None = None) -> Path:
    """An export directory (``model.safetensors`` + ``config.yaml``) of the model ``model_config`` builds; the
    config also holds ``sections`` (say the run's ``data``)."""
    model, config_yaml = _built(model_config, sections)
    export_weights(model, directory, config_yaml)
    return directory


def checkpointed_run(directory: Path, model_config: dict) -> Path:
    """A run directory holding one training checkpoint of a freshly built model (as the trainer writes it)."""
    model, config_yaml = _built(model_config)
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Checkpointer(directory / "checkpoints", keep_last=1, env=env).save(1, model, optimizer, {}, config_yaml)
    return directory
