"""A run's output channels behind one object: metrics.jsonl, TensorBoard, wandb, console progress.

Files in ``output_dir`` (written by rank 0 only, except the per-rank text logs):

* ``metrics.jsonl`` - one JSON object per :meth:`RunLogger.log` call: ``step``, ``split``, ``time`` (unix
  seconds) and the metrics. JSON cannot hold NaN or infinity, so non-finite values are written as ``null``.
* ``tensorboard/`` - scalars tagged ``<split>/<name>``.
* ``wandb/`` and ``wandb_id.txt`` - the wandb run (optional); the id file makes a resumed run continue the
  same wandb run.
* ``logs/rank{rank}.log`` - every rank's text log (see :func:`setup_console_logging`).

The plain progress line formats four metric names specially: ``loss``, ``lr``, and the throughputs in their units,
``samples_per_s`` (``samples/s``) and ``tokens_per_s`` (``tok/s``, logged for token data only); any other metric is
printed as ``name value``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import rich
import torch
import yaml
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

LOGGER_NAME = "polymodal"
METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_id.txt"
WANDB_SETTINGS_FILE = ".wandb.yaml"
_WANDB_FILE_KEYS = frozenset({"entity", "project", "mode", "api_key"})
_WANDB_MODES = frozenset({"online", "offline", "disabled"})
_WANDB_ENV_SWITCHES = ("WANDB_API_KEY", "WANDB_MODE")
_RESERVED_KEYS = frozenset({"step", "split", "time"})
_THROUGHPUT_UNITS = {"samples_per_s": "samples/s", "tokens_per_s": "tok/s"}  # shown last, in these units
_SPECIAL_METRICS = frozenset({"loss", "lr", *_THROUGHPUT_UNITS})  # given their own format in progress lines
_OWN_HANDLER = "_polymodal_handler"
# `logger.info(..., extra=FILE_ONLY)` reaches the rank log file but not the console.
FILE_ONLY = {"file_only": True}

logger = logging.getLogger(__name__)


class WandbSettings(Protocol):
    """What :class:`RunLogger` reads from a wandb config object (any object with these attributes)."""

    enabled: bool
    project: str | None
    entity: str | None
    mode: str | None
    tags: list[str] | tuple[str, ...] | None


def setup_console_logging(output_dir: Path | None, rank: int, debug: bool) -> logging.Logger:
    """Configure and return the ``polymodal`` logger; calling it again replaces, never duplicates, handlers.

    Rank 0 logs to the console (INFO, or DEBUG with ``debug``), through rich on a terminal so log lines
    print cleanly above the progress bar. Every rank appends to ``<output_dir>/logs/rank{rank}.log``.
    """
    root = logging.getLogger(LOGGER_NAME)
    level = logging.DEBUG if debug else logging.INFO
    root.setLevel(level)
    for handler in [h for h in root.handlers if getattr(h, _OWN_HANDLER, False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = []
    if rank == 0:
        handlers.append(_console_handler())
    if output_dir is not None:
        log_path = Path(output_dir) / "logs" / f"rank{rank}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        file_format = f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"
        file_handler.setFormatter(logging.Formatter(file_format))
        handlers.append(file_handler)
    for handler in handlers:
        handler.setLevel(level)
        setattr(handler, _OWN_HANDLER, True)
        root.addHandler(handler)
    return root


def _console_handler() -> logging.Handler:
    if sys.stdout.isatty():
        handler: logging.Handler = RichHandler(console=rich.get_console(), show_path=False)
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: not getattr(record, "file_only", False))
    return handler


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file; malformed lines (e.g. cut off by a crash) are skipped, counted."""
    records, n_bad = _parse_metrics(Path(path).read_text(encoding="utf-8"))
    if n_bad:
        logger.warning("Skipped %d malformed line(s) in %s", n_bad, path)
    return records


class RunLogger:
    """The one object the trainer logs through. Built on every rank; only rank 0 writes anything.

    Resuming at ``start_step`` drops records with ``step > start_step`` from an existing metrics.jsonl (a
    crashed run may have logged past its last checkpoint; those steps are re-run) and hides the matching
    TensorBoard events. wandb ignores steps earlier than the last step it has already recorded, so on resume
    it keeps the crashed run's values for the re-run steps instead of duplicating them. ``progress_bar``
    defaults to "stdout is a terminal"; without it, every train :meth:`log` prints one plain line.
    """

    def __init__(
        self,
        output_dir: Path,
        total_steps: int,
        rank: int = 0,
        tensorboard: bool = True,
        wandb: WandbSettings | None = None,
        run_name: str = "run",
        config: dict[str, Any] | None = None,
        start_step: int = 0,
        progress_bar: bool | None = None,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start_step must be in [0, total_steps={total_steps}], got {start_step}")
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / METRICS_FILE
        self.total_steps = total_steps
        self.start_step = start_step
        self.is_writer = rank == 0
        self._start_time = time.monotonic()
        self._closed = False
        self._tensorboard = None
        self._wandb_run = None
        self._progress: Progress | None = None
        if not self.is_writer:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _drop_records_after(self.metrics_path, start_step)
        if wandb_configured(wandb):
            self._wandb_run = _init_wandb(wandb, self.output_dir, run_name, config)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(
                log_dir=str(self.output_dir / "tensorboard"),
                purge_step=start_step + 1 if start_step else None,
                flush_secs=30,
            )
        if sys.stdout.isatty() if progress_bar is None else progress_bar:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=rich.get_console(),
            )
            self._progress.add_task(run_name, total=total_steps, completed=start_step, loss="-")
            self._progress.start()

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` (numbers, 1-element tensors or numpy scalars) for ``split`` at ``step``."""
        if not self.is_writer:
            return
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string, got {split!r}")
        values = {name: _to_float(name, value) for name, value in metrics.items()}
        record: dict[str, Any] = {"step": step, "split": split, "time": time.time()}
        record.update({name: value if math.isfinite(value) else None for name, value in values.items()})
        with open(self.metrics_path, "a", encoding="utf-8") as metrics_file:  # closed each time: crash-safe
            metrics_file.write(json.dumps(record, allow_nan=False) + "\n")
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{split}/{name}", value, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log({f"{split}/{name}": value for name, value in values.items()}, step=step)
        if split != "train":
            logger.info("%s step %d | %s", split, step, _format_metrics(values))
            return
        line = f"step {step}/{self.total_steps} | {_format_metrics(values)} | eta {self._eta(step)}"
        if self._progress is None:
            logger.info(line)
        else:
            logger.info(line, extra=FILE_ONLY)
            self.advance(step, values.get("loss"))

    def advance(self, step: int, loss: float | None = None) -> None:
        """Move the progress bar to ``step`` (cheap: call it every step; pass a float loss, not a tensor)."""
        if self._progress is None:
            return
        fields = {} if loss is None else {"loss": f"{loss:.4f}"}
        self._progress.update(self._progress.task_ids[0], completed=step, **fields)

    def close(self) -> None:
        """Stop the progress bar and flush and close every channel. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._progress.stop()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        elapsed = time.monotonic() - self._start_time
        if done <= 0 or elapsed <= 0:
            return "?"
        remaining_s = max(self.total_steps - step, 0) * elapsed / done
        return str(datetime.timedelta(seconds=round(remaining_s)))


def _to_float(name: Any, value: Any) -> float:
    if not isinstance(name, str) or not name or name in _RESERVED_KEYS:
        raise ValueError(f"metric name must be a non-empty string other than {sorted(_RESERVED_KEYS)}, got {name!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:  # numpy scalar or 1-element array
        value = value.item()
    if isinstance(value, (int, float)):  # bool is an int
        return float(value)
    raise ValueError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}")


def _format_metrics(values: dict[str, float]) -> str:
    parts = []
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    if "lr" in values:
        parts.append(f"lr {values['lr']:.1e}")
    parts += [f"{name} {value:.4g}" for name, value in values.items() if name not in _SPECIAL_METRICS]
    parts += [f"{_si(values[name])} {unit}" for name, unit in _THROUGHPUT_UNITS.items() if name in values]
    return " | ".join(parts)


def _si(value: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.3g}"  # a slow run's 0.25 samples/s is not 0


def _parse_metrics(text: str) -> tuple[list[dict[str, Any]], int]:
    records, n_bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            n_bad += 1
            continue
        is_record = isinstance(record, dict) and isinstance(record.get("step"), int)
        if is_record and isinstance(record.get("split"), str):
            records.append(record)
        else:
            n_bad += 1
    return records, n_bad


def _drop_records_after(metrics_path: Path, start_step: int) -> None:
    """Rewrite ``metrics_path`` without records past ``start_step`` or malformed lines (atomic rename)."""
    if not metrics_path.exists():
        return
    records, n_bad = _parse_metrics(metrics_path.read_text(encoding="utf-8"))
    kept = [record for record in records if record["step"] <= start_step]
    if n_bad == 0 and len(kept) == len(records):
        return
    logger.info(
        "Resuming at step %d: dropped %d record(s) logged after it and %d malformed line(s) from %s",
        start_step,
        len(records) - len(kept),
        n_bad,
        metrics_path,
    )
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
    os.replace(tmp, metrics_path)


def wandb_configured(settings: WandbSettings | None) -> bool:
    """``settings.enabled`` when it is set; otherwise whether a ``.wandb.yaml`` or wandb variables exist."""
    if settings is None:
        return False
    enabled = getattr(settings, "enabled", None)
    if enabled is not None:
        return bool(enabled)
    return (Path.cwd() / WANDB_SETTINGS_FILE).is_file() or any(v in os.environ for v in _WANDB_ENV_SWITCHES)


def _read_wandb_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must be a mapping with keys {sorted(_WANDB_FILE_KEYS)}")
    unknown = sorted(set(settings) - _WANDB_FILE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_WANDB_FILE_KEYS)}")
    for key, value in settings.items():
        if not isinstance(value, str):
            raise ValueError(f"{path}: {key} must be a string, got {type(value).__name__}")
    return settings


def _stable_run_id(output_dir: Path) -> str:
    id_path = output_dir / WANDB_ID_FILE
    if id_path.exists():
        run_id = id_path.read_text(encoding="utf-8").strip()
        if run_id.isalnum():
            return run_id
        logger.warning("Ignoring invalid wandb run id %r in %s; starting a new wandb run", run_id, id_path)
    run_id = uuid.uuid4().hex[:16]
    id_path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


def _init_wandb(settings: WandbSettings, output_dir: Path, run_name: str, config: dict[str, Any] | None) -> Any:
    """Start (or resume) the wandb run. Config fields win over ``./.wandb.yaml``; unset ones fall to wandb's
    own defaults and ``WANDB_*`` environment variables."""
    try:
        import wandb
    except ImportError as err:
        raise ImportError(
            "wandb logging is enabled but wandb is not installed: "
            "pip install 'polymodal[wandb]' (or disable wandb in the config)"
        ) from err
    file_settings = _read_wandb_file(Path.cwd() / WANDB_SETTINGS_FILE)
    mode = getattr(settings, "mode", None) or file_settings.get("mode")
    if mode is not None and mode not in _WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {sorted(_WANDB_MODES)}, got {mode!r}")
    api_key = file_settings.get("api_key")
    tags = getattr(settings, "tags", None)
    return wandb.init(
        dir=str(output_dir),
        mode=mode,
        project=getattr(settings, "project", None) or file_settings.get("project") or "polymodal",
        entity=getattr(settings, "entity", None) or file_settings.get("entity"),
        name=run_name,
        tags=list(tags) if tags else None,
        config=config,
        id=_stable_run_id(output_dir),
        resume="allow",
        settings=wandb.Settings(api_key=api_key) if api_key else None,
    )
