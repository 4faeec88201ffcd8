import pytest
import torch

from polymodal.config import ConfigError
from polymodal.train import memory

MODEL = {"_target_": "torch.nn.Linear", "in_features": 1024, "out_features": 1024}  # 1.05 M parameters: 16.8 MB


def test_a_model_that_fits_passes_and_one_that_does_not_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 20 * 2**20)
    memory.check_training_state_fits(MODEL, torch.device("cpu"))
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 10 * 2**20)
    with pytest.raises(ConfigError, match=r"0.00 B parameters: training it needs at least 0.0 GiB"):
        memory.check_training_state_fits(MODEL, torch.device("cpu"))
    memory.check_training_state_fits(MODEL, torch.device("cpu"), shards=2)  # FSDP over 2 ranks halves it


def test_unknown_memory_or_a_model_that_cannot_be_built_on_meta_is_not_checked(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: None)
    memory.check_training_state_fits(MODEL, torch.device("cpu"))
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 1)
    memory.check_training_state_fits({"_target_": "torch.tensor", "data": [1.0]}, torch.device("cpu"))


def test_this_machine_reports_its_free_memory():
    assert memory.available_memory_bytes(torch.device("cpu")) > 2**20
