"""Training runs launched with torchrun as real processes (gloo on CPU) and compared by their logged losses: shared by
the parallel-equivalence tests of the engine and of the families."""

import json
import os
import socket
import subprocess
import sys

import pytest

RTOL = 1e-4  # layouts differ only in fp32 reduction order: the fifth significant digit after a few Adam steps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
