"""Flipped bytes and truncated shards are found before loading; the newest intact checkpoint is resumed instead."""

import logging

import pytest
import torch
from torch import nn

from polymodal.checkpoint.dcp import Checkpointer, load_model_weights
from polymodal.checkpoint.errors import CheckpointError
from polymodal.distributed.env import DistEnv

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def two_checkpoints(directory) -> tuple[nn.Module, torch.optim.Optimizer, Checkpointer]:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpointer = Checkpointer(directory, keep_last=2, env=ENV)
    for step in (1, 2):
        checkpointer.save(step, model, optimizer, {"skipped_steps": 0, "data": {}}, "")
    return model, optimizer, checkpointer


def flip_a_byte(file) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def truncate(file) -> None:
    file.write_bytes(file.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [flip_a_byte, truncate])
def test_a_damaged_shard_is_refused_and_latest_falls_back(tmp_path, caplog, damage):
    model, optimizer, checkpointer = two_checkpoints(tmp_path)
    newest = tmp_path / "step_00000002"
    damage(next(newest.glob("*.distcp")))

    with pytest.raises(CheckpointError, match=r"step_00000002 is damaged \(__0_0.distcp does not match"):
        checkpointer.load(newest, model, optimizer)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_model_weights(newest, model)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        assert checkpointer.latest() == tmp_path / "step_00000001"
    assert "step_00000002 is damaged" in caplog.text
    assert checkpointer.load(checkpointer.latest(), model, optimizer)["step"] == 1


def test_latest_refuses_when_every_checkpoint_is_damaged(tmp_path):
    _, _, checkpointer = two_checkpoints(tmp_path)
    for shard in tmp_path.glob("step_*/*.distcp"):
        flip_a_byte(shard)
    with pytest.raises(CheckpointError, match="every checkpoint .* is damaged"):
        checkpointer.latest()
