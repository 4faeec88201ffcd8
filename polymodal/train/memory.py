"""Refuse, before anything is built, a model whose training state cannot fit in the device's memory: a GPU-sized
config on a laptop CPU would otherwise be killed by the out-of-memory killer without a word."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from polymodal.config import ConfigError, instantiate

log = logging.getLogger("polymodal")

TRAINING_BYTES_PER_PARAMETER = 16  # fp32 weights and gradients, AdamW's two moments (activations come on top)


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` now: CUDA's free bytes, the machine's ``MemAvailable`` for CPU; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:  # not Linux
            return None
    return None


def check_training_state_fits(model_config: Any, device: torch.device, shards: int = 1) -> None:
    """Count the parameters of ``model_config`` built on the meta device (no memory), and raise a ConfigError if
    their training state, split over ``shards`` ranks, exceeds the free memory of ``device``."""
    available = available_memory_bytes(device)
    if available is None:
        return
    try:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in instantiate(model_config).parameters())
    except Exception as error:  # noqa: BLE001 - a model that cannot be built on meta is checked by its real build
        log.debug("memory check skipped: the model cannot be built on the meta device (%s)", error)
        return
    needed = parameters * TRAINING_BYTES_PER_PARAMETER / shards
    if needed > available:
        raise ConfigError(
            f"the model has {parameters / 1e9:.2f} B parameters: training it needs at least {needed / 2**30:.1f} GiB "
            f"on each {device.type} device for weights, gradients and AdamW state, and {available / 2**30:.1f} GiB "
            "are free; use more or larger devices (experiment.distributed) or a smaller config"
        )
