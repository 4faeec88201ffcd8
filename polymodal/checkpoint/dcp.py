"""Complete, atomic, resharding checkpoints on ``torch.distributed.checkpoint`` (DCP).

Layout of ``<output_dir>/checkpoints/step_00000100/``::

    .metadata, __*_*.distcp   model and optimizer tensors (DCP: sharded per rank, resharded on load)
    metadata.json             DCP's metadata as JSON: loading reads this, never the pickled .metadata
    checksums.json            SHA-256 of every other file, checked before loading
    trainer_state.json        step, skip counter, data-loader position, world size, library version
    rng/rank<R>.json          every RNG of rank R
    config.yaml               the resolved config of the run

Only tensors go through DCP. Everything else is JSON, because DCP stores non-tensor values as pickles and loads
them with ``weights_only=False``; a checkpoint must be safe to open even when it came from someone else. For the
same reason DCP's own pickled ``.metadata`` is never read (:mod:`polymodal.checkpoint.safe_metadata`).

Every rank writes into ``.tmp-step_*``; after a barrier rank 0 renames it to ``step_*``. The rename is the commit:
a crash at any earlier point leaves the previous checkpoint as the newest complete one, and the stale temp
directory is removed by the next save.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from polymodal import __version__
from polymodal.checkpoint.errors import CheckpointError
from polymodal.checkpoint.integrity import damage, verify, write_checksums
from polymodal.checkpoint.rng import capture_rng_state, restore_rng_state
from polymodal.checkpoint.safe_metadata import (
    METADATA_JSON,
    JsonMetadataReader,
    JsonMetadataWriter,
    read_json_metadata,
    refuse_without_json_metadata,
)
from polymodal.config.errors import ConfigError
from polymodal.distributed.env import DistEnv, barrier

log = logging.getLogger("polymodal")

_STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every save and load in one process that it assumes one process; that is no news here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _partition(tree: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a nested dict into (tensor leaves, everything else), keeping the nesting."""
    tensors: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            sub_tensors, sub_others = _partition(value)
            if sub_tensors:
                tensors[key] = sub_tensors
            if sub_others:
                others[key] = sub_others
        elif isinstance(value, torch.Tensor):
            tensors[key] = value
        else:
            others[key] = value
    return tensors, others


def _merge(tensors: dict[str, Any], others: dict[str, Any]) -> dict[str, Any]:
    merged = dict(tensors)
    for key, value in others.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def step_of(checkpoint: Path) -> int:
    match = _STEP_DIR.match(checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint} is not a checkpoint directory (expected a name like step_00000100)")
    return int(match.group(1))


class Checkpointer:
    """Saves and restores the whole training state under ``directory``, keeping the newest ``keep_last``."""

    def __init__(self, directory: Path, keep_last: int, env: DistEnv):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.env = env

    def complete_checkpoints(self) -> list[Path]:
        """Committed checkpoints, oldest first (a ``step_*`` directory without its trainer state is ignored)."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
        return sorted(found, key=step_of)

    def latest(self) -> Path | None:
        """The newest complete checkpoint whose files are intact; newer damaged ones are skipped with a warning."""
        complete = self.complete_checkpoints()
        for checkpoint in reversed(complete):
            if not (checkpoint / METADATA_JSON).is_file():
                return checkpoint  # from an older polymodal, without checksums: loading refuses it in one line
            problem = damage(checkpoint)
            if problem is None:
                return checkpoint
            log.warning("checkpoint %s is damaged (%s): falling back to an older one", checkpoint, problem)
        if complete:
            raise CheckpointError(f"every checkpoint in {self.directory} is damaged; start a new run")
        return None

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
        config_yaml: str,
    ) -> Path:
        final = self.directory / f"step_{step:08d}"
        staging = self.directory / f".tmp-{final.name}"
        if self.env.is_main:
            for stale in self.directory.glob(".tmp-step_*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier()

        model_state, optim_state = get_state_dict(model, optimizer)
        tensors, others = _partition({"model": model_state, "optim": optim_state})
        state = dict(trainer_state, step=step, world_size=self.env.world_size, version=__version__)
        try:
            self._write(staging, tensors, others, state, config_yaml)
        except (OSError, RuntimeError, CheckpointException) as error:
            if not _disk_full(error):
                raise
            self._raise_disk_full(step, staging, error)
        if self.env.is_main:
            if final.exists():  # a re-save of the same step (e.g. after a resume) replaces it
                shutil.rmtree(final)
            staging.rename(final)
            self._prune()
        barrier()
        log.info("saved checkpoint %s", final)
        return final

    def _write(
        self, staging: Path, tensors: dict[str, Any], others: dict[str, Any], state: dict[str, Any], config_yaml: str
    ) -> None:
        """Every file of the checkpoint into ``staging``, the checksums of all ranks' files last."""
        with _single_process_quiet():
            dcp.save(tensors, storage_writer=JsonMetadataWriter(staging))
        _write_json(staging / "rng" / f"rank{self.env.rank}.json", capture_rng_state())
        if self.env.is_main:
            _write_json(staging / "non_tensor_state.json", others)
            _write_json(staging / TRAINER_STATE, state)
            (staging / "config.yaml").write_text(config_yaml)
        barrier()
        if self.env.is_main:
            write_checksums(staging)

    def _raise_disk_full(self, step: int, staging: Path, error: BaseException) -> NoReturn:
        """One line instead of torch's long traceback (which never says the disk is full); the partial save goes."""
        if self.env.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        complete = self.complete_checkpoints()
        previous = "there is no earlier one"
        if complete:
            previous = f"the previous checkpoint step {step_of(complete[-1])} is intact"
        message = f"no space left on device while saving step {step} to {self.directory}; {previous}"
        raise CheckpointError(message) from error

    def branch_from(self, step: int) -> Path | None:
        """Training continues from ``step``: move this directory's newer checkpoints aside (into
        ``abandoned-after-step_N-<time>/``, returned) so that pruning and ``latest()`` follow the new branch
        instead of the old run's later steps. Collective: every rank calls it; the main one moves."""
        newer = [p for p in self.complete_checkpoints() if step_of(p) > step]
        aside = None
        if newer:
            aside = self.directory / f"abandoned-after-step_{step:08d}-{time.strftime('%Y%m%d-%H%M%S')}"
            if self.env.is_main:
                aside.mkdir()
                for checkpoint in newer:
                    checkpoint.rename(aside / checkpoint.name)
                log.warning(
                    "resumed from step %d: the newer checkpoints %s were moved to %s (this run is a new branch)",
                    step,
                    [p.name for p in newer],
                    aside,
                )
        barrier()
        return aside

    def _prune(self) -> None:
        for old in self.complete_checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer and this rank's RNGs in place; return the trainer state."""
        checkpoint = Path(checkpoint)
        state_file = checkpoint / TRAINER_STATE
        if not state_file.is_file():
            raise FileNotFoundError(f"{checkpoint} is not a complete polymodal checkpoint (no {TRAINER_STATE})")
        metadata = open_checkpoint(checkpoint)
        trainer_state = json.loads(state_file.read_text())

        model_state, optim_state = get_state_dict(model, optimizer)
        tensors, _ = _partition({"model": model_state, "optim": optim_state})
        check_same_shapes(checkpoint, metadata, tensors)
        _load_tensors(tensors, checkpoint)
        others = json.loads((checkpoint / "non_tensor_state.json").read_text())
        restored = _merge(tensors, others)
        set_state_dict(model, optimizer, model_state_dict=restored["model"], optim_state_dict=restored.get("optim", {}))

        rng_file = checkpoint / "rng" / f"rank{self.env.rank}.json"
        if trainer_state["world_size"] == self.env.world_size and rng_file.is_file():
            restore_rng_state(json.loads(rng_file.read_text()))
        else:
            log.warning(
                "checkpoint was written by %d ranks, resuming on %d: RNG streams are re-seeded, not restored",
                trainer_state["world_size"],
                self.env.world_size,
            )
        return trainer_state


def _flat_shapes(tree: dict[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{"model.a.b": shape}`` of a nested tensor dict, keyed as DCP flattens it."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            shapes.update(_flat_shapes(value, f"{name}."))
        else:
            shapes[name] = tuple(value.shape)
    return shapes


def _disk_full(error: BaseException) -> bool:
    """Whether a save failed for want of space: ENOSPC anywhere in the exception chain (DCP wraps each rank's error
    in a CheckpointException), or torch's zip writer's short write (``unexpected pos ...``), which carries no errno."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if "unexpected pos" in str(current):
            return True
        pending += [current.__cause__, current.__context__]
        if isinstance(current, CheckpointException):
            pending += [failure for failure, _ in current.failures.values()]
    return False


def open_checkpoint(checkpoint: Path) -> Metadata:
    """The DCP metadata of ``checkpoint``, after refusing in one line one that could only be opened by unpickling
    or whose files are damaged."""
    refuse_without_json_metadata(checkpoint)
    verify(checkpoint)
    return read_json_metadata(checkpoint)


def _load_tensors(tensors: dict[str, Any], checkpoint: Path) -> None:
    """DCP's load (resharding) of ``tensors`` in place, reading metadata from JSON only."""
    with _single_process_quiet():
        dcp.load(tensors, storage_reader=JsonMetadataReader(checkpoint))


def check_same_shapes(checkpoint: Path, metadata: Metadata, tensors: dict[str, Any]) -> None:
    """Refuse, in one line, a checkpoint whose tensors differ in name or shape from the model/optimizer about to
    be loaded (a resume after changing the model), before DCP fails deep inside with a long traceback."""
    stored = {
        key: tuple(meta.size)
        for key, meta in metadata.state_dict_metadata.items()
        if isinstance(meta, TensorStorageMetadata)
    }
    wanted = _flat_shapes(tensors)
    differ = [
        f"{key} {stored[key]} there, {shape} now"
        for key, shape in wanted.items()
        if key in stored and stored[key] != shape
    ]
    missing = [key for key in wanted if key not in stored]
    if not differ and not missing:
        return
    first = (differ or [f"{missing[0]} is not in it"])[0]
    count = len(differ) + len(missing)
    raise ConfigError(
        f"cannot resume from {checkpoint}: it holds another model ({count} tensors differ, e.g. {first}); "
        f"start fresh with another experiment.output_dir, or experiment.resume=none to train over it from step 0"
    )


def load_model_weights(checkpoint: Path, model: nn.Module) -> None:
    """Load only the model part of a checkpoint (for export and evaluation)."""
    open_checkpoint(Path(checkpoint))
    tensors, _ = _partition({"model": get_model_state_dict(model)})
    _load_tensors(tensors, checkpoint)
    others = json.loads((Path(checkpoint) / "non_tensor_state.json").read_text())
    restored = _merge(tensors, {"model": others.get("model", {})})
    set_model_state_dict(model, restored["model"])
