"""The chunked head + loss computes what the logits path computes (loss, metrics, gradients: to 1e-6 in float64),
keeps no logits for backward, and computes its logits in float32 under bf16 autocast."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from polymodal.models.llm import build_llm
from polymodal.models.parts import VocabularyHead
from polymodal.models.token_loss import chunked_token_loss
from polymodal.objectives.lm import NextTokenLoss, logits_loss_sums

VOCAB, DIM = 37, 16


def head_inputs(bias: bool, dtype=torch.float64, ignored: float = 0.4, shape=(3, 11)):
    """Hidden states, head weight (and bias) and targets with about ``ignored`` of them ``-100``."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(*shape, DIM, generator=generator, dtype=dtype).requires_grad_()
    weight = (torch.randn(VOCAB, DIM, generator=generator, dtype=dtype) * 0.5).requires_grad_()
    bias_ = torch.randn(VOCAB, generator=generator, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(VOCAB, shape, generator=generator)
    targets[torch.rand(shape, generator=generator) < ignored] = -100
    return hidden, weight, bias_, targets


def chunked_and_full(hidden, weight, bias, targets, chunk_size, z_loss_weight, forward_grads_for=None):
    """``(loss, metrics, gradients)`` of the chunked path, then of the logits path, through one objective;
    ``forward_grads_for``: the z-loss weight the chunked path computes its gradients for in the forward pass."""
    objective = NextTokenLoss(z_loss_weight=z_loss_weight)
    inputs = [tensor for tensor in (hidden, weight, bias) if tensor is not None]
    results = []
    chunked = chunked_token_loss(hidden, weight, bias, targets, chunk_size, z_loss_weight=forward_grads_for)
    for data in (
        {"token_loss": chunked},
        {"logits": F.linear(hidden, weight, bias), "target_ids": targets},
    ):
        loss, metrics = objective(data)
        results.append((loss, metrics, torch.autograd.grad(loss, inputs)))
    return results


def assert_same(chunked, full, tolerance):
    (loss, metrics, grads), (full_loss, full_metrics, full_grads) = chunked, full
    close = dict(atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(loss, full_loss, **close)
    assert metrics.keys() == full_metrics.keys()
    for name, value in metrics.items():
        torch.testing.assert_close(value, full_metrics[name], **close, msg=name)
    for grad, full_grad in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(grad, full_grad, **close)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("z_loss_weight", [0.0, 0.1], ids=["no-z", "z"])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])  # 4 and 7 leave a short last chunk; 1000 holds all
def test_loss_metrics_and_gradients_equal_the_logits_path_in_float64(chunk_size, z_loss_weight, bias):
    chunked, full = chunked_and_full(*head_inputs(bias), chunk_size, z_loss_weight)
    assert_same(chunked, full, tolerance=1e-6)
    assert set(chunked[1]) == {"cross_entropy", "accuracy", "log_z_squared"} | ({"z_loss"} if z_loss_weight else set())


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("z_loss_weight", [0.0, 0.1], ids=["no-z", "z"])
@pytest.mark.parametrize("chunk_size", [4, 1000])
def test_gradients_computed_in_forward_equal_the_logits_path(chunk_size, z_loss_weight, bias):
    chunked, full = chunked_and_full(*head_inputs(bias), chunk_size, z_loss_weight, forward_grads_for=z_loss_weight)
    assert_same(chunked, full, tolerance=1e-6)


def test_gradients_for_another_z_loss_weight_are_recomputed_in_backward():
    chunked, full = chunked_and_full(*head_inputs(bias=True), 4, z_loss_weight=0.1, forward_grads_for=0.3)
    assert_same(chunked, full, tolerance=1e-6)


@pytest.mark.parametrize(("forward_grads_for", "backward_matmuls"), [(None, True), (0.1, False)])
def test_backward_of_forward_computed_gradients_runs_no_matmul(forward_grads_for, backward_matmuls):
    hidden, weight, bias, targets = head_inputs(bias=True)
    sums = chunked_token_loss(hidden, weight, bias, targets, 4, z_loss_weight=forward_grads_for)
    loss, _ = NextTokenLoss(z_loss_weight=0.1)({"token_loss": sums})
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    assert (counter.get_total_flops() > 0) == backward_matmuls


def test_float32_agrees_to_float32_precision():
    chunked, full = chunked_and_full(*head_inputs(bias=True, dtype=torch.float32), 5, 1e-2)
    assert_same(chunked, full, tolerance=1e-6)


def test_an_all_ignored_batch_has_loss_zero_and_zero_gradients():
    hidden, weight, bias, targets = head_inputs(bias=True, ignored=1.0)
    chunked, full = chunked_and_full(hidden, weight, bias, targets, 4, 0.1)
    for loss, metrics, grads in (chunked, full):
        assert loss.item() == 0.0 and all(value.item() == 0.0 for value in metrics.values())
        assert all(torch.equal(grad, torch.zeros_like(grad)) for grad in grads)


def test_backward_keeps_the_labelled_rows_and_log_z_not_the_logits():
    hidden, weight, _, targets = head_inputs(bias=False, ignored=0.5)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        sums = chunked_token_loss(hidden, weight, None, targets, 4)
    labelled = int(sums.count)
    shapes = sorted(tuple(tensor.shape) for tensor in saved if tensor is not weight)
    assert shapes == sorted([(labelled, DIM), (labelled,), (labelled,), (labelled,)])  # + the labelled rows' indices


def test_chunk_logits_are_float32_under_bf16_autocast_forward_and_backward():
    hidden, weight, bias, targets = head_inputs(bias=True, dtype=torch.float32)
    reference = chunked_token_loss(hidden, weight, bias, targets, 4)
    reference_grads = torch.autograd.grad(reference.cross_entropy + reference.log_z_squared, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sums = chunked_token_loss(hidden, weight, bias, targets, 4)
        grads = torch.autograd.grad(sums.cross_entropy + sums.log_z_squared, (hidden, weight))
        bf16_logits = logits_loss_sums(F.linear(hidden, weight, bias), targets)
    for got, expected in zip(sums, reference, strict=True):
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    for got, expected in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    relative = (bf16_logits.cross_entropy / reference.cross_entropy - 1).abs()
    assert relative > 1e-4  # what bf16 logits would have cost


@pytest.mark.parametrize("forward_grads_for", [None, 0.0], ids=["grads-in-backward", "grads-in-forward"])
def test_bf16_inputs_are_computed_in_float32_and_get_bf16_gradients(forward_grads_for):
    """FSDP2 mixed precision hands the head bf16 weights and hidden states."""
    hidden, weight, _, targets = head_inputs(bias=False, dtype=torch.bfloat16)
    sums = chunked_token_loss(hidden, weight, None, targets, 4, z_loss_weight=forward_grads_for)
    as_float = [tensor.detach().float().requires_grad_() for tensor in (hidden, weight)]
    reference = chunked_token_loss(*as_float[:2], None, targets, 4)
    assert sums.cross_entropy.dtype == torch.float32
    torch.testing.assert_close(sums.cross_entropy, reference.cross_entropy, rtol=1e-6, atol=0)
    grads = torch.autograd.grad(sums.cross_entropy, (hidden, weight))
    reference_grads = torch.autograd.grad(reference.cross_entropy, as_float)
    for got, expected in zip(grads, reference_grads, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, expected.bfloat16())


def test_chunk_size_must_be_positive():
    hidden, weight, _, targets = head_inputs(bias=False)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_token_loss(hidden, weight, None, targets, 0)
    with pytest.raises(ValueError, match="loss_chunk_size must be >= 1 or None"):
        VocabularyHead(DIM, VOCAB, loss_chunk_size=0)


def test_the_head_writes_loss_sums_given_targets_and_logits_otherwise():
    hidden, _, _, targets = head_inputs(bias=False)
    head = VocabularyHead(DIM, VOCAB, loss_chunk_size=4).double()
    assert set(head({"hidden": hidden, "target_ids": targets})) == {"hidden", "target_ids", "token_loss"}
    assert head({"hidden": hidden})["logits"].shape == (3, 11, VOCAB)  # generation: no targets
    head.loss_chunk_size = None
    assert "logits" in head({"hidden": hidden, "target_ids": targets})


def lm_batch(ignored: float) -> dict:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(VOCAB, (2, 13), generator=generator)
    targets = tokens[:, 1:].clone()
    targets[torch.rand(targets.shape, generator=generator) < ignored] = -100
    documents = torch.zeros(2, 12, dtype=torch.long)
    return {"input_ids": tokens[:, :-1], "target_ids": targets, "document_ids": documents,
            "position_ids": torch.arange(12).expand(2, 12)}  # fmt: skip


@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_the_llm_trains_on_the_same_loss_and_gradients_as_from_its_logits(tie_embeddings):
    torch.manual_seed(0)
    fused = build_llm(VOCAB, DIM, 2, 4, 2, max_seq_len=16, multiple_of=8, tie_embeddings=tie_embeddings,
                      loss_chunk_size=5).double()  # fmt: skip
    from_logits = copy.deepcopy(fused)
    from_logits.head.loss_chunk_size = None
    objective = NextTokenLoss(z_loss_weight=0.1)
    batch = lm_batch(ignored=0.3)
    results = []
    for model in (fused, from_logits):
        loss, metrics = objective(model(dict(batch)))
        loss.backward()
        results.append((loss, metrics, [param.grad for param in model.parameters()]))
    assert_same(*results, tolerance=1e-6)


def test_loss_weight_counts_the_labelled_positions_so_weighted_means_pool_over_batches():
    """Two micro-batches weighted by ``loss_weight`` (as the trainer weighs them) give the loss of both at once."""
    torch.manual_seed(0)
    objective = NextTokenLoss(z_loss_weight=0.1)
    batch = lm_batch(ignored=0.4)
    assert objective.loss_weight(batch) == int((batch["target_ids"] != -100).sum())
    logits = torch.randn(*batch["target_ids"].shape, VOCAB, dtype=torch.float64)
    halves = [
        {"logits": part, "target_ids": targets}
        for part, targets in zip(logits.chunk(2), batch["target_ids"].chunk(2), strict=True)
    ]
    weights = torch.stack([objective.loss_weight(half).double() for half in halves])
    assert weights[0] != weights[1]  # the halves label different numbers of positions
    pooled = sum(objective(half)[0] * weight for half, weight in zip(halves, weights, strict=True)) / weights.sum()
    whole = objective({"logits": logits, "target_ids": batch["target_ids"]})[0]
    torch.testing.assert_close(pooled, whole)
    unweighted = sum(objective(half)[0] for half in halves) / 2
    assert not torch.allclose(unweighted, whole)  # a mean of micro-batch means is not the loss of the whole
