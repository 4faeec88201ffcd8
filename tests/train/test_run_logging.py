import json
import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from polymodal.train.logging import LOGGER_NAME, RunLogger, read_metrics, setup_console_logging


@pytest.fixture(autouse=True)
def _restore_polymodal_logger():
    root = logging.getLogger(LOGGER_NAME)
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@dataclass
class _Wandb:
    enabled: bool = True
    project: str | None = None
    entity: str | None = None
    mode: str | None = "offline"
    tags: list[str] = field(default_factory=lambda: ["test"])


def _lines(path):
    return path.read_text().splitlines()


def test_metrics_jsonl_records_converted_values(tmp_path):
    with RunLogger(tmp_path, total_steps=100, tensorboard=False, progress_bar=False) as run:
        run.log(
            10,
            "train",
            {
                "loss": torch.tensor(2.5),
                "lr": np.float32(1e-3),
                "tokens": 7,
                "grad_norm": float("nan"),
                "big": torch.tensor([float("inf")]),
            },
        )
        run.log(10, "val", {"loss": np.array(3.0)})
    raw = [json.loads(line) for line in _lines(tmp_path / "metrics.jsonl")]
    assert raw[0]["step"] == 10 and raw[0]["split"] == "train" and raw[0]["time"] > 1.6e9
    assert raw[0]["loss"] == 2.5 and raw[0]["lr"] == pytest.approx(1e-3) and raw[0]["tokens"] == 7.0
    assert raw[0]["grad_norm"] is None and raw[0]["big"] is None  # non-finite -> null
    assert read_metrics(tmp_path / "metrics.jsonl") == raw
    assert raw[1] == {"step": 10, "split": "val", "time": raw[1]["time"], "loss": 3.0}


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"loss": torch.ones(2)}, "'loss' must be a scalar"),
        ({"loss": "low"}, "'loss' must be a number"),
        ({"step": 1.0}, "metric name"),
        ({"loss": np.ones(3)}, "'loss' must be a number"),
    ],
)
def test_bad_metrics_are_rejected(tmp_path, metrics, message):
    with (
        RunLogger(tmp_path, total_steps=10, tensorboard=False, progress_bar=False) as run,
        pytest.raises(ValueError, match=message),
    ):
        run.log(1, "train", metrics)


def test_bad_constructor_arguments(tmp_path):
    with pytest.raises(ValueError, match="total_steps"):
        RunLogger(tmp_path, total_steps=0)
    with pytest.raises(ValueError, match="start_step"):
        RunLogger(tmp_path, total_steps=10, start_step=11)


def test_resume_drops_records_after_start_step(tmp_path):
    with RunLogger(tmp_path, total_steps=100, tensorboard=False, progress_bar=False) as run:
        for step in (10, 20, 30, 40):
            run.log(step, "train", {"loss": 5.0 - step / 10})
        run.log(20, "val", {"loss": 4.0})
    with open(tmp_path / "metrics.jsonl", "a") as crashed:
        crashed.write('{"step": 50, "split": "tr')  # a write cut off by the crash

    with RunLogger(tmp_path, total_steps=100, tensorboard=False, progress_bar=False, start_step=20) as run:
        run.log(30, "train", {"loss": 0.5})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["split"], r["loss"]) for r in records] == [
        (10, "train", 4.0),
        (20, "train", 3.0),
        (20, "val", 4.0),
        (30, "train", 0.5),
    ]


def test_read_metrics_counts_malformed_lines(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n[1]\n\n{"step": 2, "spl\n')
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        assert read_metrics(path) == [{"step": 1, "split": "train", "loss": 1.0}]
    assert "Skipped 2 malformed line(s)" in caplog.text


def test_tensorboard_scalars_and_resume_purge(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path, total_steps=100, progress_bar=False) as run:
        for step in (10, 20, 30):
            run.log(step, "train", {"loss": float(step)})
    # A resumed run starts in a later second: TensorBoard orders event files by their creation second, then by a
    # per-process writer counter compared as text ("10" < "9" once a process has opened ten writers).
    time.sleep(1.05)
    with RunLogger(tmp_path, total_steps=100, progress_bar=False, start_step=20) as run:
        run.log(30, "train", {"loss": 99.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 10.0), (20, 20.0), (30, 99.0)]


def test_plain_progress_lines_go_to_console_and_rank_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    setup_console_logging(tmp_path, rank=0, debug=False)
    with RunLogger(tmp_path, total_steps=1000, tensorboard=False, start_step=100) as run:
        run.log(120, "train", {"loss": 3.12344, "lr": 3e-4, "tokens_per_s": 5210.0, "samples_per_s": 20.35, "mfu": 0.4})
        run.log(140, "train", {"loss": 3.0, "samples_per_s": 0.25})  # image data: samples/s only
        run.log(120, "val", {"loss": 3.5})
    out = capsys.readouterr().out
    assert "step 120/1000 | loss 3.1234 | lr 3.0e-04 | mfu 0.4 | 20.4 samples/s | 5.2k tok/s | eta 0:" in out
    assert "step 140/1000 | loss 3.0000 | 0.25 samples/s | eta 0:" in out
    assert "val step 120 | loss 3.5000" in out
    rank_log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "rank0 INFO" in rank_log and "step 120/1000 | loss 3.1234" in rank_log


def test_progress_bar_mode_keeps_train_lines_in_the_file_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    setup_console_logging(tmp_path, rank=0, debug=False)
    with RunLogger(tmp_path, total_steps=50, tensorboard=False, progress_bar=True) as run:
        run.advance(5)
        run.log(10, "train", {"loss": 1.2345})
        task = run._progress.tasks[0]
        assert task.completed == 10 and task.fields["loss"] == "1.2345"
    assert "step 10/50 | loss 1.2345" not in capsys.readouterr().out
    assert "step 10/50 | loss 1.2345" in (tmp_path / "logs" / "rank0.log").read_text()


def test_setup_console_logging_is_idempotent_and_per_rank(tmp_path):
    logger = setup_console_logging(tmp_path, rank=0, debug=True)
    n_handlers = len(logger.handlers)
    assert setup_console_logging(tmp_path, rank=0, debug=True) is logger
    assert len(logger.handlers) == n_handlers
    assert logger.level == logging.DEBUG

    setup_console_logging(tmp_path, rank=3, debug=False)
    own = [h for h in logger.handlers if getattr(h, "_polymodal_handler", False)]
    assert len(own) == 1 and isinstance(own[0], logging.FileHandler)  # no console on rank 3
    logging.getLogger(f"{LOGGER_NAME}.some.module").info("hello from rank 3")
    rank_log = (tmp_path / "logs" / "rank3.log").read_text()
    assert "rank3 INFO polymodal.some.module: hello from rank 3" in rank_log


def test_non_zero_rank_writes_nothing(tmp_path):
    with RunLogger(tmp_path / "out", total_steps=10, rank=1, wandb=_Wandb()) as run:
        run.log(1, "train", {"loss": 1.0})
    assert not (tmp_path / "out").exists()


def test_missing_wandb_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'polymodal\[wandb\]'"):
        RunLogger(tmp_path, total_steps=10, tensorboard=False, progress_bar=False, wandb=_Wandb())


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    return tmp_path


def test_wandb_settings_file_is_validated(offline_wandb):
    (offline_wandb / ".wandb.yaml").write_text("project: p\nteam: t\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['team'\]"):
        RunLogger(offline_wandb / "run", total_steps=10, tensorboard=False, progress_bar=False, wandb=_Wandb())
    (offline_wandb / ".wandb.yaml").write_text("project: p\n")
    with pytest.raises(ValueError, match="wandb mode"):
        RunLogger(
            offline_wandb / "run", total_steps=10, tensorboard=False, progress_bar=False, wandb=_Wandb(mode="sometimes")
        )


def test_wandb_offline_run_resumes_with_the_same_id(offline_wandb):
    (offline_wandb / ".wandb.yaml").write_text("project: polymodal-tests\nmode: online\n")
    out = offline_wandb / "run"
    with RunLogger(
        out, total_steps=10, tensorboard=False, progress_bar=False, wandb=_Wandb(), config={"lr": 0.1}
    ) as run:
        run.log(1, "train", {"loss": 1.0})
        first_id = run._wandb_run.id
        assert run._wandb_run.project == "polymodal-tests"
        assert run._wandb_run.config["lr"] == 0.1
    assert (out / "wandb_id.txt").read_text().strip() == first_id
    assert any((out / "wandb").glob("offline-run-*"))  # explicit mode="offline" beat the file's "online"

    with RunLogger(out, total_steps=10, tensorboard=False, progress_bar=False, wandb=_Wandb(), start_step=1) as run:
        run.log(2, "train", {"loss": 0.5})
        assert run._wandb_run.id == first_id


def test_wandb_turns_on_when_configured_unless_switched_off(tmp_path, monkeypatch):
    from polymodal.config.schema import WandbConfig
    from polymodal.train.logging import wandb_configured

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert not wandb_configured(WandbConfig()) and not wandb_configured(None)
    (tmp_path / ".wandb.yaml").write_text("entity: me\n")
    assert wandb_configured(WandbConfig())
    assert not wandb_configured(WandbConfig(enabled=False))
    (tmp_path / ".wandb.yaml").unlink()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_configured(WandbConfig())
