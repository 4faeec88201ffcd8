import pytest
import torch

from polymodal.models.layers.drop_path import DropPath


def test_identity_in_eval_and_at_zero():
    x = torch.randn(4, 3, 5)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_training_drops_whole_samples_and_preserves_expectation():
    torch.manual_seed(0)
    p = 0.3
    drop = DropPath(p).train()
    x = torch.ones(20000, 2, 3)
    out = drop(x)
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] != 0
    assert torch.all(per_sample[kept] == 1 / (1 - p))
    assert torch.all(per_sample[~kept] == 0)
    assert abs(kept.float().mean().item() - (1 - p)) < 0.02
    assert abs(out.mean().item() - 1.0) < 0.03


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="probability"):
        DropPath(p)
