"""What a generation asks of the model, importable without torch (the command's ``--help`` shows these defaults):
the sampling settings and the prompt templates."""

from __future__ import annotations

from dataclasses import dataclass

from polymodal.families.lumina.conversations import PLACEHOLDER

TEXT_TO_IMAGE = "Generate an image of {width}x{height} according to the following prompt:\n{prompt}"  # upstream's
CAPTION = f"{PLACEHOLDER}\nDescribe this image."  # the synthetic conversations' captioning request


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn; the defaults are Lumina-mGPT's inference defaults (``top_p`` 0: off)."""

    temperature: float = 1.0
    image_top_k: int = 2000
    text_top_k: int = 10
    top_p: float = 0.0
    cfg_scale: float = 4.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.image_top_k < 0 or self.text_top_k < 0:
            raise ValueError(f"top-k must be >= 0 (0: off), got {self.image_top_k} and {self.text_top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1] (0: off), got {self.top_p}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0 (1: no guidance), got {self.cfg_scale}")
