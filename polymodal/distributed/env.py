"""Process-group set-up, device choice and data-parallel wrapping.

A run is single-process when no launcher variables are set, and joins a process group when started by
``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) or SLURM ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/
``SLURM_LOCALID``; ``MASTER_ADDR``/``MASTER_PORT`` must then be exported by the batch script). The backend follows
the device: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from polymodal.config import ConfigError
from polymodal.distributed.groups import set_data_parallel_group


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launcher_ranks() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables, else SLURM's, else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"])
    return 0, 0, 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("experiment.device=cuda but no CUDA device is available; use device=auto or cpu")
        visible = torch.cuda.device_count()
        # One GPU per task (SLURM --gpus-per-task=1) shows every rank its own GPU as device 0.
        index = 0 if visible == 1 else local_rank
        if index >= visible:
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {visible} CUDA devices are visible")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if requested == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {requested!r} (expected auto, cpu or cuda)")


def setup_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the process group the launcher prepared (if any) and pick this rank's device."""
    rank, local_rank, world_size = _launcher_ranks()
    chosen = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
            device_id=chosen if chosen.type == "cuda" else None,
        )
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


BACKEND_DRAIN_SECONDS = 0.1


def teardown_distributed() -> None:
    """Forget the published data-parallel group, collect what still refers to groups, destroy the process groups,
    then let the backend's worker threads finish while the interpreter is alive.

    A gloo worker thread releases a collective's work object just after the caller's ``wait()`` has returned, and
    releasing it drops Python tensors, which takes the GIL. ``destroy_process_group`` does not join those threads
    (a group that anything still refers to, a DTensor's or FSDP's state included, lives on), so a thread still
    waiting for the GIL when the interpreter shuts down is killed inside that destructor and the process aborts
    (``terminate called without an active exception``) after a successful run: seen about once in ten 2-process
    expert-parallel runs on a busy 2-core machine (a core dump shows the thread in ``~AsyncBarrierWork``). Sleeping
    releases the GIL to those threads; a tenth of a second, once per run, is ample for a thread that only has to be
    scheduled."""
    set_data_parallel_group(None)
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(BACKEND_DRAIN_SECONDS)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Suppress data-parallel gradient reduction on non-final micro-steps of gradient accumulation.

    DDP: ``no_sync()``. FSDP2: ``set_requires_gradient_sync(False)`` (gradients accumulate unsharded, then the final
    micro-step reduce-scatters the sum). Anything else: nothing to suppress.
    """
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def on_any_rank(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """Each flag OR-ed over every rank, in one all-reduce (the flags themselves in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(flags)
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's picklable ``value``, in rank order (``[value]`` in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return values
    return [value]


@contextlib.contextmanager
def main_process_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. builds a cache), then the others run it and find the cache."""
    if not env.is_main:
        barrier()
    yield
    if env.is_main:
        barrier()
