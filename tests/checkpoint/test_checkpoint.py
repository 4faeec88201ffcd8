import errno
import json
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from polymodal.checkpoint.dcp import Checkpointer, load_model_weights
from polymodal.checkpoint.errors import CheckpointError
from polymodal.checkpoint.safe_metadata import JsonMetadataWriter, read_json_metadata
from polymodal.distributed.env import DistEnv

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for group in optimizer.param_groups:
        group["base_lr"] = 1e-2
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_model_optimizer_rngs_and_state(tmp_path):
    model, optimizer = model_and_optimizer(seed=0)
    checkpointer = Checkpointer(tmp_path, keep_last=2, env=ENV)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = checkpointer.save(7, model, optimizer, {"skipped_steps": 1, "data": {"epoch": 2}}, "a: 1\n")
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))

    other_model, other_optimizer = model_and_optimizer(seed=1)
    state = checkpointer.load(path, other_model, other_optimizer)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draws
    assert state["step"] == 7 and state["data"] == {"epoch": 2} and state["skipped_steps"] == 1
    assert state["version"] and state["world_size"] == 1
    for a, b in zip(model.state_dict().values(), other_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved, restored = optimizer.state_dict(), other_optimizer.state_dict()
    for key in saved["state"]:
        for name, value in saved["state"][key].items():
            assert torch.equal(value, restored["state"][key][name])
    assert restored["param_groups"][0]["base_lr"] == 1e-2
    assert (path / "config.yaml").read_text() == "a: 1\n"


def test_dcp_payload_is_tensors_only_so_loading_never_unpickles(tmp_path):
    model, optimizer = model_and_optimizer()
    path = Checkpointer(tmp_path, keep_last=1, env=ENV).save(1, model, optimizer, {"skipped_steps": 0, "data": {}}, "")
    metadata = read_json_metadata(path)
    assert metadata.state_dict_metadata
    assert all(isinstance(m, TensorStorageMetadata) for m in metadata.state_dict_metadata.values())
    groups = json.loads((path / "non_tensor_state.json").read_text())["optim"]["param_groups"]
    assert groups[0]["lr"] == pytest.approx(1e-2)


def test_latest_ignores_staging_directories_and_load_rejects_incomplete(tmp_path):
    model, optimizer = model_and_optimizer()
    checkpointer = Checkpointer(tmp_path, keep_last=3, env=ENV)
    checkpointer.save(2, model, optimizer, {"skipped_steps": 0, "data": {}}, "")
    (tmp_path / ".tmp-step_00000009").mkdir()
    (tmp_path / "step_00000011").mkdir()  # e.g. copied by hand, half-way
    assert checkpointer.latest().name == "step_00000002"
    with pytest.raises(FileNotFoundError, match="not a complete polymodal checkpoint"):
        checkpointer.load(tmp_path / "step_00000011", model, optimizer)
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(tmp_path, keep_last=0, env=ENV)


def test_model_only_load(tmp_path):
    model, optimizer = model_and_optimizer(seed=0)
    path = Checkpointer(tmp_path, keep_last=1, env=ENV).save(3, model, optimizer, {"skipped_steps": 0, "data": {}}, "")
    fresh, _ = model_and_optimizer(seed=5)
    load_model_weights(path, fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_single_process_save_and_load_are_quiet(tmp_path):
    """No "torch.distributed is disabled ... assuming single process" warning on every save and load."""
    import warnings

    model, optimizer = model_and_optimizer()
    checkpointer = Checkpointer(tmp_path, keep_last=1, env=ENV)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = checkpointer.save(1, model, optimizer, {"skipped_steps": 0, "data": {}}, "")
        checkpointer.load(path, *model_and_optimizer(seed=1))
        load_model_weights(path, model_and_optimizer(seed=2)[0])
    assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)]


def test_a_checkpoint_of_another_model_is_refused_before_loading(tmp_path):
    from polymodal.config import ConfigError

    model, optimizer = model_and_optimizer()
    path = Checkpointer(tmp_path, keep_last=1, env=ENV).save(1, model, optimizer, {"skipped_steps": 0, "data": {}}, "")
    wider = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"cannot resume from .*\(4, 3\) there, \(8, 3\) now"):
        Checkpointer(tmp_path, keep_last=1, env=ENV).load(path, wider, torch.optim.AdamW(wider.parameters()))


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598"),  # torch's short write
    ],
)
def test_a_full_disk_says_so_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    model, optimizer = model_and_optimizer()
    checkpointer = Checkpointer(tmp_path, keep_last=1, env=ENV)
    checkpointer.save(1, model, optimizer, {"skipped_steps": 0, "data": {}}, "")

    def disk_full(self, plan, planner):
        raise failure

    monkeypatch.setattr(JsonMetadataWriter, "write_data", disk_full)
    with pytest.raises(CheckpointError) as raised:
        checkpointer.save(2, model, optimizer, {"skipped_steps": 0, "data": {}}, "")
    assert str(raised.value) == (
        f"no space left on device while saving step 2 to {tmp_path}; the previous checkpoint step 1 is intact"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]  # staging cleaned, previous kept
    assert checkpointer.load(checkpointer.latest(), *model_and_optimizer(seed=1))["step"] == 1
