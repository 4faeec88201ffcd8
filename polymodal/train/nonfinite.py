"""Non-finite steps: the forward-updated state a skipped step rolls back, and whether the policy lets the run on."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.config.schema import NonFiniteConfig


class ForwardState:
    """The floating-point buffers a checkpoint keeps: the state a forward pass may update in place (EMA codebooks,
    running statistics), which a non-finite step must not leave behind."""

    def __init__(self, model: nn.Module):
        persistent = set(model.state_dict(keep_vars=True))
        self.buffers = [
            buffer for name, buffer in model.named_buffers() if name in persistent and buffer.is_floating_point()
        ]

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the buffers as they are now."""
        return [buffer.clone() for buffer in self.buffers]

    def restore(self, snapshot: list[torch.Tensor]) -> None:
        """Put back the values of a :meth:`snapshot`."""
        for buffer, before in zip(self.buffers, snapshot, strict=True):
            buffer.copy_(before)


def stop_reason(policy: NonFiniteConfig, skipped_steps: int) -> str | None:
    """Why the run stops after its ``skipped_steps``-th non-finite step, or ``None`` when the policy skips it."""
    if policy.policy == "skip" and skipped_steps <= policy.max_skips:
        return None
    return "policy is 'stop'" if policy.policy == "stop" else f"more than {policy.max_skips} steps skipped"
