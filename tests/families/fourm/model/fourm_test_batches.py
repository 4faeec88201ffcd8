"""Hand-made 4M batches following the batch contract, and a tiny model, shared by the 4M tests.

Images: a random input subset and a disjoint random target subset. Sequences (row of ``2 * (max_tokens + 1)``):
a contiguous input run at the start, a contiguous target run from offset ``max_tokens``, PAD = 0 elsewhere.
"""

from __future__ import annotations

import torch

from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.families.fourm.model import FourM

MODALITY_OVERRIDES = {
    "rgb@32": {"patch_size": 8},
    "tok_rgb@32": {"vocab_size": 40, "patch_size": 8},
    "caption": {"vocab_size": 50, "max_tokens": 6},
}


def tiny_registry() -> ModalityRegistry:
    return ModalityRegistry.from_config(list(MODALITY_OVERRIDES), MODALITY_OVERRIDES)


def tiny_fourm(seed: int = 0, **overrides) -> FourM:
    torch.manual_seed(seed)
    settings = dict(dim=32, encoder_depth=2, decoder_depth=2, num_heads=4, mlp="swiglu") | overrides
    return FourM(tiny_registry(), **settings)


def random_batch(registry: ModalityRegistry, batch: int = 3, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    data = {}
    for spec in registry.values():
        if spec.is_pixels:
            tensor = torch.randn(batch, spec.num_channels, spec.resolution, spec.resolution, generator=generator)
            is_input = rand(batch, spec.num_positions()) < 0.4
            is_target = torch.zeros_like(is_input)
        elif spec.is_image:
            tensor = torch.randint(0, spec.vocab_size, (batch, spec.num_positions()), generator=generator)
            is_input = rand(tensor.shape) < 0.35
            is_target = ~is_input & (rand(tensor.shape) < 0.5)
        else:
            length, budget = spec.num_positions(), spec.max_tokens
            tensor = torch.zeros(batch, length, dtype=torch.long)
            is_input = torch.zeros(batch, length, dtype=torch.bool)
            is_target = torch.zeros_like(is_input)
            for row in range(batch):
                inputs = int(torch.randint(0, budget + 1, (), generator=generator))
                targets = int(torch.randint(1, budget + 1, (), generator=generator))
                is_input[row, :inputs] = True
                is_target[row, budget : budget + targets] = True
            tokens = torch.randint(1, spec.vocab_size, tensor.shape, generator=generator)
            tensor = torch.where(is_input | is_target, tokens, 0)
        data[spec.name] = {"tensor": tensor, "is_input": is_input, "is_target": is_target}
    return data
