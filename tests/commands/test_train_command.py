"""``polymodal train`` releases the trained model before it destroys the process groups."""

import weakref

from polymodal.cli import main
from polymodal.distributed import env
from polymodal.train.trainer import Trainer


def test_the_model_is_released_before_the_process_groups_are_destroyed(tiny_config, monkeypatch):
    """A model's FSDP/DDP state holds process groups; were the model still alive at teardown, the groups would be
    destroyed at interpreter shutdown, which aborts a gloo process after a successful run."""
    models: list[weakref.ref] = []
    alive_at_teardown: list[bool] = []
    original_fit = Trainer.fit
    original_teardown = env.teardown_distributed

    def fit_and_remember_the_model(trainer: Trainer):
        models.append(weakref.ref(trainer.model))
        return original_fit(trainer)

    def look_then_teardown() -> None:
        alive_at_teardown.append(models[0]() is not None)
        original_teardown()

    monkeypatch.setattr(Trainer, "fit", fit_and_remember_the_model)
    monkeypatch.setattr(env, "teardown_distributed", look_then_teardown)

    assert main(["train", "--config", str(tiny_config), "experiment.total_steps=2"]) == 0
    assert alive_at_teardown == [False]
