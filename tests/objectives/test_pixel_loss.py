"""NextPatchPixelLoss against a plain computation: per-patch normalisation, next-patch shift, prefix exclusion."""

import pytest
import torch

from polymodal.objectives.pixel import NextPatchPixelLoss


def plain_loss(pred: torch.Tensor, images: torch.Tensor, prefix_lengths: list[int], patch: int) -> torch.Tensor:
    """Loops over samples and targets: target j of sample b counts iff j >= K_b; its error is the mean squared
    difference between pred[b, j - 1] and patch j standardised with its mean and unbiased variance."""
    batch, channels, height, width = images.shape
    grid_w = width // patch
    num_patches = (height // patch) * grid_w
    total, count = torch.zeros(()), 0
    for b in range(batch):
        for j in range(1, num_patches):
            if j < prefix_lengths[b]:
                continue
            r, c = divmod(j, grid_w)
            block = images[b, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
            target = block.permute(1, 2, 0).reshape(-1)
            target = (target - target.mean()) / (target.var(unbiased=True) + 1e-6).sqrt()
            total = total + ((pred[b, j - 1] - target) ** 2).mean()
            count += 1
    return total / count


def test_loss_matches_a_plain_computation():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 8, 12)
    pred = torch.randn(3, 6, 4 * 4 * 3)
    prefix = [1, 3, 5]
    data = {"pixel_pred": pred, "image": images, "prefix_lengths": torch.tensor(prefix)}
    objective = NextPatchPixelLoss(patch_size=4)
    loss, metrics = objective(data)
    torch.testing.assert_close(loss, plain_loss(pred, images, prefix, 4))
    counted = 5 + 3 + 1
    assert objective.loss_weight(data) == counted
    torch.testing.assert_close(metrics["counted_fraction"], torch.tensor(counted / 15))


def test_prefix_targets_and_the_last_prediction_get_no_gradient():
    torch.manual_seed(0)
    pred = torch.randn(1, 6, 48, requires_grad=True)
    data = {"pixel_pred": pred, "image": torch.rand(1, 3, 8, 12), "prefix_lengths": torch.tensor([3])}
    NextPatchPixelLoss(patch_size=4)(data)[0].backward()
    has_gradient = pred.grad[0].abs().sum(dim=-1) > 0
    assert has_gradient.tolist() == [False, False, True, True, True, False]  # predictions of targets 3, 4, 5


def test_nothing_counted_gives_a_finite_zero_loss():
    pred = torch.randn(2, 6, 48, requires_grad=True)
    data = {"pixel_pred": pred, "image": torch.rand(2, 3, 8, 12), "prefix_lengths": torch.tensor([6, 6])}
    loss, metrics = NextPatchPixelLoss(patch_size=4)(data)
    assert loss.item() == 0.0 and metrics["counted_fraction"].item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_unnormalised_targets_are_the_raw_patches():
    images = torch.rand(1, 1, 2, 4)
    pred = torch.zeros(1, 2, 4)
    data = {"pixel_pred": pred, "image": images, "prefix_lengths": torch.tensor([0])}
    loss, _ = NextPatchPixelLoss(patch_size=2, normalize=False)(data)
    torch.testing.assert_close(loss, (images[0, 0, :, 2:] ** 2).mean())


def test_bad_input_is_named():
    objective = NextPatchPixelLoss(patch_size=4)
    images = torch.rand(2, 3, 8, 12)
    with pytest.raises(ValueError, match="one per patch"):
        objective({"pixel_pred": torch.randn(2, 7, 48), "image": images, "prefix_lengths": torch.tensor([1, 1])})
    with pytest.raises(ValueError, match=r"\[B=2\]"):
        objective({"pixel_pred": torch.randn(2, 6, 48), "image": images, "prefix_lengths": torch.tensor([1])})
    with pytest.raises(ValueError, match="at least 2 patches"):
        one_patch = {"pixel_pred": torch.randn(2, 1, 48), "image": images[..., :4, :4]}
        objective({**one_patch, "prefix_lengths": torch.tensor([1, 1])})
