"""How the colour and shape judge (:mod:`polymodal.data.synth.judge`) is trained; free of torch, so that command
lines can show the defaults cheaply."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class JudgeSettings:
    """How a judge is trained: ``num_scenes`` renders of ``seed`` at ``size`` px, ``steps`` AdamW steps."""

    size: int = 64
    num_scenes: int = 4000
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    seed: int = 0  # polymodal synth's default: the training scenes

    def __post_init__(self) -> None:
        if min(self.size, self.num_scenes, self.steps, self.batch_size, self.width) < 1 or self.lr <= 0:
            raise ValueError(f"judge settings must be positive, got {self}")

    @property
    def cache_name(self) -> str:
        return "judge-" + "-".join(f"{key}{value}" for key, value in asdict(self).items()) + ".safetensors"
