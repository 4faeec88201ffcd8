"""How a 4M evaluation runs; kept free of torch so the command line can show these defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass

TRAINING_SEED = 0  # ``polymodal synth --seed`` default: the scenes the model was trained on


@dataclass(frozen=True)
class EvalSettings:
    """How the tasks are run and the baselines fitted (module docstring)."""

    batch_size: int = 16
    baseline_scenes: int = 64
    baseline_seed: int = TRAINING_SEED
    rgb_scheme: str = "roar"  # caption->rgb
    rgb_steps: int = 8
    rgb_temperature: float = 1.0
    rgb_cfg_scale: float = 1.0
    presence_fraction: float = 0.005
    sample_seed: int = 0

    def check(self) -> None:
        if self.batch_size < 1 or self.baseline_scenes < 1 or self.rgb_steps < 1:
            raise ValueError(f"batch_size, baseline_scenes and rgb_steps must be >= 1, got {self}")
        if not 0.0 < self.presence_fraction <= 1.0:
            raise ValueError(f"presence_fraction must lie in (0, 1], got {self.presence_fraction}")
