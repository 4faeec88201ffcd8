"""Real multi-process runs on gloo, shared by the distributed tests of the engine and of the families: functions run in
spawned processes joined by one process group (:func:`spawn_gloo`), and training runs launched with torchrun and
compared by their logged losses."""

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polymodal.distributed.env import teardown_distributed

RTOL = 1e-4  # layouts differ only in fp32 reduction order: the fifth significant digit after a few Adam steps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_gloo(worker: Callable[..., Any], world: int, *args: Any) -> dict[int, Any]:
    """Run ``worker(rank, world, *args)`` in ``world`` spawned processes (one thread each) joined by a gloo group;
    returns what each rank returned. A rank that raises fails the caller with its traceback.

    The worker's locals are gone before the group is torn down by ``teardown_distributed``, as ``polymodal train``
    tears down: gloo threads still releasing work at interpreter shutdown abort the process after a passing run."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gloo_rank, args=(worker, world, free_port(), results, args), nprocs=world, join=True)
        return dict(results)


def _gloo_rank(rank: int, worker: Callable[..., Any], world: int, port: int, results, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = worker(rank, world, *args)
        dist.barrier()  # no rank tears its gloo pairs down while another still uses them
    finally:
        teardown_distributed()


def torchrun_env() -> dict[str, str]:
    """This process's environment without its own rank variables, one thread per process, warnings off."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def torchrun(nproc: int, config, *overrides: str) -> None:
    env = torchrun_env()
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}", "-m", "polymodal", "train", "--config", str(config), *overrides,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-4000:]


def losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def assert_losses_match(got: dict[int, float], expected: dict[int, float], steps) -> None:
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=RTOL), f"step {step}: {got[step]} vs {expected[step]}"
