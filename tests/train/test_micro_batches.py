import pytest
import torch
from torch import nn

from polymodal.train.micro_batches import micro_batch_mean, micro_batch_shares


class TokenCountLoss(nn.Module):
    """An objective that averages over its batch's labelled tokens (labels != -100)."""

    def loss_weight(self, batch):
        return (batch["labels"] != -100).sum()


def test_shares_weigh_micro_batches_by_tokens_and_average_to_one():
    labels = [torch.tensor([[1, 2, -100]]), torch.tensor([[1, -100, -100]]), torch.tensor([[1, 2, 3]])]
    parts = [{"labels": lab} for lab in labels]
    shares = micro_batch_shares(TokenCountLoss(), parts)
    counts = torch.tensor([2.0, 1.0, 3.0])
    assert torch.allclose(torch.stack(shares), counts / counts.mean())
    assert float(sum(shares)) / len(shares) == pytest.approx(1.0)
    # per-micro-batch token means weighted by the shares give the mean over all tokens
    token_losses = [torch.tensor([0.5, 1.5]), torch.tensor([4.0]), torch.tensor([1.0, 2.0, 3.0])]
    weighted = micro_batch_mean([loss.mean() * share for loss, share in zip(token_losses, shares, strict=True)])
    assert weighted.item() == pytest.approx(torch.cat(token_losses).mean().item())


def test_objectives_without_loss_weight_weigh_micro_batches_alike():
    assert micro_batch_shares(nn.MSELoss(), [{}, {}]) == [1.0, 1.0]


def test_mean_of_one_micro_batch_is_its_value_and_of_several_their_mean():
    one = torch.tensor(2.5)
    assert micro_batch_mean([one]) is one
    assert micro_batch_mean([torch.tensor(1.0), torch.tensor(4.0)]).item() == pytest.approx(2.5)
