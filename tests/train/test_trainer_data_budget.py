"""The trainer stops with one line and a checkpoint when a loader's data error budget is exceeded — decided on
every rank at once after the step, so all ranks take part in the checkpoint."""

import json

import pytest

from polymodal.config import load_config
from polymodal.train.trainer import Trainer, TrainingStopped

MESSAGE = "data error budget exceeded: 2 distinct bad samples, budget 1 (decode=2); first bad sample ids [3, 7]"


class OverBudgetLoader:
    """Wraps the train loader like a :class:`ResumableLoader` that keeps a budget: over it from the ``over_at``-th
    batch on; ``next()`` never raises once the trainer has deferred the check."""

    def __init__(self, loader, over_at: int) -> None:
        self.loader, self.over_at, self.taken, self.deferred = loader, over_at, 0, False

    def __next__(self):
        self.taken += 1
        return next(self.loader)

    def defer_budget_check(self) -> None:
        self.deferred = True

    def over_budget(self) -> str | None:
        return MESSAGE if self.taken >= self.over_at else None

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state) -> None:
        self.loader.load_state_dict(state)


def test_exceeded_data_budget_stops_with_one_line_after_a_checkpoint_of_the_step(tiny_config, monkeypatch):
    trainer = Trainer(load_config(tiny_config, ["experiment.ckpt_every=100"]))
    loader = OverBudgetLoader(trainer.data.train, over_at=6)
    trainer.data.train = loader
    trainer.data.train.defer_budget_check()  # what the trainer does to a budget-keeping loader when it builds it
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(f"{MESSAGE} at step 6; checkpoint in ")
    assert "raise data.error_budget" in message
    checkpoint = trainer.checkpointer.latest()
    assert checkpoint.name == "step_00000006" and str(checkpoint) in message
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["data"] == loader.loader.state_dict()  # the step with the replaced sample is complete
