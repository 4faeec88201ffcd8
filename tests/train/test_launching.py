"""``polymodal train`` started the three ways a user starts it, as real processes (gloo on CPU).

* two torchrun "nodes" on localhost meeting through a c10d rendezvous (c10d assigns the ranks);
* SLURM-style tasks without torchrun: ranks from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``;
* one process with a leftover ``SLURM_NTASKS=1``, which must not try to form a process group.

Every launch has one deadline; when a process fails or the deadline passes, every launched process (and the
workers torchrun started) is killed and the outputs are shown, so a broken launch fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from parallel_runs import free_port

from polymodal.train.logging import read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
DEADLINE_S = 240.0
TRAIN = ["-m", "polymodal", "train"]
# Variables a launcher exports; scrubbed so that tests run inside a SLURM job or under torchrun stay independent.
LAUNCHER_VARIABLES = frozenset(
    {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
)
# Logged by whichever rank tokenizes the corpus into the cache: only rank 0 may (main_process_first).
CACHE_BUILT = "tokenizing the train split"


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without launcher or SLURM variables, plus ``variables``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in LAUNCHER_VARIABLES and not name.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **variables)
    return env


def train_command(config: Path, *overrides: str) -> list[str]:
    """Arguments after the interpreter: ``-m polymodal train --config ... <overrides>`` for a short run."""
    return [
        *TRAIN,
        "--config",
        str(config),
        f"experiment.total_steps={STEPS}",
        "experiment.distributed.timeout_minutes=2",  # a rank waiting on a dead peer gives up instead of hanging
        *overrides,
    ]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere). torchrun puts its workers in their own
    sessions, so killing torchrun's process group would leave them running."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return [process for child in children for process in (*descendants(child), child)]


def kill_tree(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def outputs_report(outputs: list[Path]) -> str:
    return "\n".join(f"----- {path.name} -----\n{path.read_text()[-4000:]}" for path in outputs)


def run_together(commands: list[list[str]], envs: list[dict[str, str]], log_dir: Path) -> None:
    """Start every command at once and require all of them to exit 0 before one shared deadline.

    The first non-zero exit ends the wait: its peers would otherwise block in a collective until their timeout.
    """
    outputs = [log_dir / f"process{index}.out" for index in range(len(commands))]
    processes: list[subprocess.Popen] = []
    try:
        for command, env, output in zip(commands, envs, outputs, strict=True):
            with output.open("w") as sink:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, *command], env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
                    )
                )
        deadline = time.monotonic() + DEADLINE_S
        while any(process.poll() is None for process in processes):
            if any(process.returncode not in (None, 0) for process in processes):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the launch did not finish within {DEADLINE_S:.0f} s\n{outputs_report(outputs)}")
            time.sleep(0.2)
    finally:
        for process in processes:
            kill_tree(process)
    exit_codes = [process.returncode for process in processes]
    assert exit_codes == [0] * len(processes), f"exit codes {exit_codes}\n{outputs_report(outputs)}"


def train_curve(run_dir: Path, metric: str) -> list[float]:
    """``metric`` of every logged train step, from rank 0's metrics.jsonl."""
    return [record[metric] for record in read_metrics(run_dir / "metrics.jsonl") if record["split"] == "train"]


def assert_trained_as_one_job(run_dir: Path, world_size: int) -> None:
    """Rank 0 logged every step, every rank has its log, one checkpoint holds every rank's state."""
    assert train_curve(run_dir, "step") == list(range(1, STEPS + 1))

    rank_logs = sorted(path.name for path in (run_dir / "logs").glob("rank*.log"))
    assert rank_logs == [f"rank{rank}.log" for rank in range(world_size)]
    assert CACHE_BUILT in (run_dir / "logs" / "rank0.log").read_text()
    for rank in range(1, world_size):
        assert CACHE_BUILT not in (run_dir / "logs" / f"rank{rank}.log").read_text(), f"rank {rank} built the cache"

    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1, checkpoints
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"]) == (STEPS, world_size)
    assert sorted(path.name for path in (checkpoints[0] / "rng").iterdir()) == [
        f"rank{rank}.json" for rank in range(world_size)
    ]


def assert_matches_one_process_with_the_global_batch(tiny_config: Path, tmp_path: Path) -> None:
    """Two ranks of batch 4 train exactly like one process of batch 8 (same sample order, averaged gradients).

    Equal losses and gradient norms at every step mean equal weights throughout. (Validation losses are not
    compared: the validation batches follow the batch size.)
    """
    reference = tmp_path / "reference"
    reference.mkdir()
    overrides = ["constants.batch_size=8", f"experiment.output_dir={reference}"]
    run_together([train_command(tiny_config, *overrides)], [clean_env()], reference)
    for metric in ("loss", "grad_norm"):  # of the global batch: means over ranks, norms of synchronised gradients
        assert train_curve(tmp_path / "run", metric) == pytest.approx(train_curve(reference, metric), rel=1e-5), metric


def test_two_torchrun_nodes_meet_through_a_c10d_rendezvous(tiny_config, tmp_path):
    node = [
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{free_port()}",
        f"--rdzv_id={uuid.uuid4().hex}",
        *train_command(tiny_config),
    ]
    run_together([node, node], [clean_env(), clean_env()], tmp_path)

    assert_trained_as_one_job(tmp_path / "run", world_size=2)
    assert_matches_one_process_with_the_global_batch(tiny_config, tmp_path)


def test_slurm_tasks_without_torchrun_form_one_job(tiny_config, tmp_path):
    port = str(free_port())
    envs = [
        clean_env(
            SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        for rank in range(2)
    ]
    run_together([train_command(tiny_config)] * 2, envs, tmp_path)

    assert_trained_as_one_job(tmp_path / "run", world_size=2)
    assert_matches_one_process_with_the_global_batch(tiny_config, tmp_path)


def test_single_process_ignores_a_leftover_slurm_ntasks_of_one(tiny_config, tmp_path):
    """As inside ``salloc -n1``: no MASTER_ADDR/MASTER_PORT is set, so joining a process group would fail."""
    env = clean_env(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0")
    run_together([train_command(tiny_config)], [env], tmp_path)

    assert_trained_as_one_job(tmp_path / "run", world_size=1)
