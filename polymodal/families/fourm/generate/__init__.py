"""4M any-to-any generation: chained schedules, token sampling, the MaskGIT / ROAR / autoregressive sampler with
classifier-free guidance, and decoded outputs (images, text, a PNG grid)."""

from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import (
    GenerationSchedule,
    GenerationStep,
    TargetSettings,
    build_schedule,
    schedule_from_dict,
)

__all__ = [
    "GenerationSampler",
    "GenerationSchedule",
    "GenerationStep",
    "TargetSettings",
    "build_schedule",
    "schedule_from_dict",
]
