"""FourM's chunked head loss + FourMLoss against the plain formula on the logits the heads make.

The reference runs the same model step by step to ``predict`` (every head's full logits), then takes 4M's loss from
them with ``F.cross_entropy`` and ``torch.logsumexp``: per modality ``sum CE / n`` averaged over the modalities
with targets (or over all of them), or ``sum CE / sum n``, each modality's part scaled by its weight (1 unless
given); the z-loss the same over ``logsumexp²``; plus ``0 * sum(logits)`` over every head. The loss, the metrics
and every parameter's gradient must agree.
"""

import pytest
import torch
import torch.nn.functional as F
from fourm_test_batches import random_batch, tiny_fourm, tiny_registry

from polymodal.families.fourm.loss import FourMLoss

EMPTY = "tok_rgb@32"  # the modality given no targets


def batch_with_an_empty_modality() -> dict:
    batch = random_batch(tiny_registry(), batch=4, seed=7)
    batch[EMPTY] = dict(batch[EMPTY], is_target=torch.zeros_like(batch[EMPTY]["is_target"]))
    return batch


def reference_loss(model, batch, mode: str, count_empty: bool, z_loss_weight: float, weights: dict):
    inputs = model.embed_inputs(batch)
    queries = model.embed_targets(batch)
    hidden = model.decode(queries, model.decoder_context(model.encode(inputs), inputs), inputs.valid)
    logits, targets = model.predict(hidden, queries)
    cross_entropy = {name: F.cross_entropy(logits[name], targets[name], reduction="sum") for name in logits}
    log_z_squared = {name: torch.logsumexp(logits[name], dim=-1).square().sum() for name in logits}
    counts = {name: targets[name].numel() for name in logits}
    present = [name for name in logits if counts[name]]
    weight = {name: weights.get(name, 1.0) for name in logits}

    def combine(sums: dict) -> torch.Tensor:
        if mode == "token":
            return sum(weight[name] * sums[name] for name in present) / sum(weight[n] * counts[n] for n in present)
        averaged = logits if count_empty else present
        return sum(weight[name] * sums[name] / counts[name] for name in present) / sum(weight[n] for n in averaged)

    anchor = 0.0 * sum(value.sum() for value in logits.values())
    accuracy = {name: (logits[name].argmax(-1) == targets[name]).float().mean() for name in present}
    return combine(cross_entropy) + z_loss_weight * combine(log_z_squared) + anchor, accuracy


def loss_and_gradients(model, compute):
    model.zero_grad(set_to_none=True)
    loss, extra = compute()
    loss.backward()
    return loss.detach(), extra, {name: param.grad for name, param in model.named_parameters()}


WEIGHTS = {"caption": 3.0, EMPTY: 0.5}


@pytest.mark.parametrize(
    ("mode", "count_empty", "z_loss_weight", "tie_embeddings", "weights"),
    [
        ("modality", False, 0.0, True, {}),
        ("modality", True, 0.1, True, {}),
        ("token", False, 0.0, False, {}),
        ("token", False, 0.1, True, {}),
        ("modality", True, 0.1, True, WEIGHTS),
        ("modality", False, 0.0, False, WEIGHTS),
        ("token", False, 0.1, True, WEIGHTS),
    ],
)
@pytest.mark.parametrize("forward_grads", [False, True], ids=["grads-in-backward", "grads-in-forward"])
def test_chunked_loss_matches_cross_entropy_on_the_heads_logits(
    mode, count_empty, z_loss_weight, tie_embeddings, weights, forward_grads
):
    model = tiny_fourm(  # several chunks per modality
        loss_chunk_size=5, tie_embeddings=tie_embeddings, loss_z_loss_weight=z_loss_weight if forward_grads else None
    )
    batch = batch_with_an_empty_modality()
    objective = FourMLoss(
        mode=mode, count_empty_modalities=count_empty, z_loss_weight=z_loss_weight, modality_weights=weights
    )
    output = {}

    def chunked():
        output.update(model(dict(batch)))
        return objective(output)

    loss, metrics, grads = loss_and_gradients(model, chunked)
    assert "logits" not in output and set(output["token_loss"]) == set(output["targets"])
    expected, accuracy, expected_grads = loss_and_gradients(
        model, lambda: reference_loss(model, batch, mode, count_empty, z_loss_weight, weights)
    )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for name, grad in expected_grads.items():
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
    head = dict(model.named_parameters())[f"decoder_embeddings.{EMPTY}.to_logits.weight"]
    assert head.grad is not None and (head.grad == 0).all()  # in the graph, with a zero gradient
    assert metrics[f"{EMPTY}/tokens"] == 0 and metrics[f"{EMPTY}/loss"] == 0 and metrics[f"{EMPTY}/accuracy"] == 0
    for name, value in accuracy.items():
        torch.testing.assert_close(metrics[f"{name}/accuracy"], value)
    assert ("z_loss" in metrics) == bool(z_loss_weight)


def test_chunked_and_logits_paths_give_the_same_loss_and_metrics():
    batch = batch_with_an_empty_modality()
    objective = FourMLoss(z_loss_weight=0.1)
    with torch.no_grad():
        chunked = objective(tiny_fourm()(dict(batch)))
        from_logits = objective(tiny_fourm(loss_chunk_size=None)(dict(batch)))
    torch.testing.assert_close(chunked[0], from_logits[0], atol=1e-6, rtol=1e-6)
    assert chunked[1].keys() == from_logits[1].keys()
    for name, value in from_logits[1].items():
        torch.testing.assert_close(chunked[1][name], value, atol=1e-6, rtol=1e-6, msg=name)


def test_bad_loss_chunk_size_is_named():
    with pytest.raises(ValueError, match="loss_chunk_size must be >= 1 or None, got 0"):
        tiny_fourm(loss_chunk_size=0)
