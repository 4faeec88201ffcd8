"""The trainer stops with one line and a checkpoint when the loader's data error budget is exceeded."""

import json

import pytest

from polymodal.config import load_config
from polymodal.data.multimodal.skips import ErrorBudgetExceeded
from polymodal.train.trainer import Trainer, TrainingStopped


class FailingLoader:
    """Wraps the train loader; the ``fail_at``-th batch raises :class:`ErrorBudgetExceeded`."""

    def __init__(self, loader, fail_at: int) -> None:
        self.loader = loader
        self.fail_at = fail_at
        self.taken = 0

    def __next__(self):
        self.taken += 1
        if self.taken == self.fail_at:
            raise ErrorBudgetExceeded("data error budget exceeded: 2 distinct bad samples, budget 1 (decode=2)")
        return next(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state) -> None:
        self.loader.load_state_dict(state)


def test_exceeded_data_budget_stops_with_one_line_after_a_checkpoint(tiny_config):
    trainer = Trainer(load_config(tiny_config, ["experiment.ckpt_every=100"]))
    trainer.data.train = FailingLoader(trainer.data.train, fail_at=6)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    message = str(stopped.value)
    assert "\n" not in message
    assert message.startswith("data error budget exceeded: 2 distinct bad samples, budget 1 (decode=2) at step 6;")
    assert "raise data.error_budget" in message
    checkpoint = trainer.checkpointer.latest()
    assert checkpoint.name == "step_00000005" and str(checkpoint) in message
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["data"] == trainer.data.train.loader.state_dict()  # the failed step's batch is read again
