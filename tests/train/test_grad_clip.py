"""clip_grad_norm is torch's clip_grad_norm_ on parameters of one mesh (or none); across meshes the EP trainer tests
compare it with the same run without expert parallelism (tests/train/test_expert_parallel_trainer.py)."""

import math

import pytest
import torch
from torch import nn

from polymodal.train.grad_clip import clip_grad_norm


def model_with_grads(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3))
    model(torch.randn(4, 6)).square().sum().backward()
    model[0].bias.grad = None  # a parameter without a gradient is left out, as by torch
    return model


@pytest.mark.parametrize("max_norm", [0.1, 1e6, math.inf])
def test_equals_torch_clip_grad_norm(max_norm):
    ours, theirs = model_with_grads(0), model_with_grads(0)
    norm = clip_grad_norm(ours.parameters(), max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    torch.testing.assert_close(norm, expected, rtol=0, atol=0)
    for mine, reference in zip(ours.parameters(), theirs.parameters(), strict=True):
        if reference.grad is None:
            assert mine.grad is None
        else:
            torch.testing.assert_close(mine.grad, reference.grad, rtol=0, atol=0)
    if max_norm == 0.1:
        assert torch.linalg.vector_norm(
            torch.cat([p.grad.flatten() for p in ours.parameters() if p.grad is not None])
        ) == pytest.approx(0.1, rel=1e-5)


def test_no_gradients_give_a_zero_norm():
    assert clip_grad_norm(nn.Linear(2, 2).parameters(), 1.0).item() == 0.0
