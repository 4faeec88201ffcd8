"""How an evaluation of the image–text family runs (:mod:`polymodal.families.lumina.evaluate.tasks`); free of torch,
so that the command line can show the defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field

from polymodal.data.synth.judge_settings import JudgeSettings
from polymodal.families.lumina.generate.settings import SamplingSettings

TRAINING_SEED = 0  # ``polymodal synth --seed`` default: the scenes the model was trained on


@dataclass(frozen=True)
class LuminaEvalSettings:
    """How the tasks run: ``captioning`` and ``drawing`` sampling, scenes per batch, the constant caption's
    training-seed scenes, and the judge."""

    batch_size: int = 16
    baseline_scenes: int = 256
    baseline_seed: int = TRAINING_SEED
    max_new_tokens: int = 64
    captioning: SamplingSettings = field(default_factory=lambda: SamplingSettings(temperature=0.0))
    drawing: SamplingSettings = field(default_factory=SamplingSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    sample_seed: int = 0

    def __post_init__(self) -> None:
        if min(self.batch_size, self.baseline_scenes, self.max_new_tokens) < 1:
            raise ValueError(f"batch_size, baseline_scenes and max_new_tokens must be >= 1, got {self}")
