"""A stop signal (SIGTERM, SIGUSR1) checkpoints the current step and exits with code 4; the next run resumes there.
Ranks agree on the step to stop at."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from parallel_runs import spawn_gloo

from polymodal.distributed.env import on_any_rank
from polymodal.train.preemption import StopSignals


def _steps_logged(metrics) -> int:
    if not metrics.exists():
        return 0
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return max((record["step"] for record in lines if record["split"] == "train"), default=0)


def test_sigusr1_checkpoints_the_current_step_and_the_next_run_resumes_there(tiny_config, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "polymodal", "train", "--config", str(tiny_config)]
    process = subprocess.Popen(
        [*command, "experiment.total_steps=100000", "experiment.ckpt_every=100000"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while _steps_logged(metrics) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 4, stderr
    assert "stopped: SIGUSR1 at step" in stderr and "Traceback" not in stderr
    step = int(stderr.split("at step ")[1].split(":")[0])
    assert (tmp_path / "run" / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").is_file()

    resumed = subprocess.run(
        [*command, f"experiment.total_steps={step + 2}"], env=env, capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"finished at step {step + 2}" in resumed.stdout


def _agreement_worker(rank: int, _world: int) -> tuple:
    with StopSignals() as stop:
        (before,) = on_any_rank([stop.received is not None], torch.device("cpu"))
        if rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # only one rank is told
        (after,) = on_any_rank([stop.received is not None], torch.device("cpu"))
    return before, after, stop.received


def test_every_rank_stops_when_one_rank_is_signalled():
    results = spawn_gloo(_agreement_worker, 2)
    assert results[0] == (False, True, None)
    assert results[1] == (False, True, signal.SIGTERM)
