"""Opening a checkpoint never unpickles: a crafted ``.metadata`` pickle is never loaded by export, resume or
``load_trained_model``; a checkpoint without the JSON metadata is refused in one line."""

import json
import subprocess
import sys

import pytest
import torch
from malicious_pickles import plant_malicious_metadata, torch_saved_marker
from torch import nn
from torch.distributed.checkpoint import FileSystemReader

from polymodal.checkpoint.dcp import Checkpointer, load_model_weights
from polymodal.checkpoint.errors import CheckpointError
from polymodal.checkpoint.integrity import write_checksums
from polymodal.checkpoint.safe_metadata import METADATA_JSON, read_json_metadata
from polymodal.checkpoint.weights import load_trained_model
from polymodal.distributed.env import DistEnv

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
MODEL_YAML = "model:\n  _target_: torch.nn.Linear\n  in_features: 3\n  out_features: 2\n"


def save_run(run_dir) -> tuple[nn.Module, torch.optim.Optimizer, Checkpointer]:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpointer = Checkpointer(run_dir / "checkpoints", keep_last=1, env=ENV)
    checkpointer.save(1, model, optimizer, {"skipped_steps": 0, "data": {}}, MODEL_YAML)
    return model, optimizer, checkpointer


def export_run(run_dir, out) -> subprocess.CompletedProcess:
    """``polymodal export`` of ``run_dir``, as a user runs it."""
    command = [sys.executable, "-m", "polymodal", "export", "--checkpoint", str(run_dir), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_json_metadata_rebuilds_what_torch_pickled(tmp_path):
    _, _, checkpointer = save_run(tmp_path)
    checkpoint = checkpointer.latest()
    pickled = FileSystemReader(checkpoint).read_metadata()  # our own fresh checkpoint: safe to unpickle here
    rebuilt = read_json_metadata(checkpoint)
    assert rebuilt.state_dict_metadata == pickled.state_dict_metadata
    assert rebuilt.storage_data == pickled.storage_data
    assert rebuilt.planner_data == pickled.planner_data


def test_a_planted_metadata_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"
    model, optimizer, checkpointer = save_run(tmp_path / "run")
    checkpoint = checkpointer.latest()
    plant_malicious_metadata(checkpoint, marker)
    write_checksums(checkpoint)  # the attacker rewrites the checksums too

    checkpointer.load(checkpointer.latest(), model, optimizer)  # what a resume=auto train does
    load_trained_model(tmp_path / "run")  # what generate, eval-4m and pretokenize-4m do
    export = export_run(tmp_path / "run", tmp_path / "export")
    assert export.returncode == 0, export.stderr
    assert not marker.exists()


def test_a_checkpoint_without_json_metadata_is_refused_in_one_line_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    model, optimizer, checkpointer = save_run(tmp_path / "run")
    checkpoint = checkpointer.latest()
    (checkpoint / METADATA_JSON).unlink()  # as written by an older polymodal
    plant_malicious_metadata(checkpoint, marker)

    with pytest.raises(CheckpointError, match="could only be read by unpickling"):
        checkpointer.load(checkpointer.latest(), model, optimizer)
    with pytest.raises(CheckpointError, match="could only be read by unpickling"):
        load_trained_model(tmp_path / "run")
    export = export_run(tmp_path / "run", tmp_path / "export")
    assert export.returncode != 0
    assert export.stderr.strip().count("\n") == 0 and "unpickling" in export.stderr, export.stderr
    assert not marker.exists()


def test_json_metadata_describing_a_non_tensor_is_refused(tmp_path):
    """DCP reads a non-tensor entry with torch.load(weights_only=False): the JSON cannot ask for one."""
    marker = tmp_path / "pwned"
    model, _, checkpointer = save_run(tmp_path / "run")
    checkpoint = checkpointer.latest()
    payload = torch_saved_marker(marker)
    (checkpoint / "__evil.distcp").write_bytes(payload)
    metadata = json.loads((checkpoint / METADATA_JSON).read_text())
    metadata["tensors"]["model.weight"] = {"bytes": True}
    storage = [entry for entry in metadata["storage"] if entry["fqn"] != "model.weight"]
    metadata["storage"] = [*storage, {"fqn": "model.weight", "offset": None, "index": None, "file": "__evil.distcp",
                                      "start": 0, "length": len(payload), "transforms": []}]  # fmt: skip
    (checkpoint / METADATA_JSON).write_text(json.dumps(metadata))
    write_checksums(checkpoint)

    with pytest.raises(CheckpointError, match="is not valid checkpoint metadata"):
        load_model_weights(checkpoint, model)  # what export does (a resume's shape check would stop it earlier)
    assert not marker.exists()
