"""4M's decoder on FlexAttention: its block-mask rule equals the dense decoder mask (padding queries attend
themselves, as the dense path lets an empty row do), and a decoder with ``attention="flex"`` gives the outputs of
the dense path, also for a sample that is all padding. Forward only on the CPU (no FlexAttention backward there)."""

import warnings

import pytest
import torch
from fourm_test_batches import random_batch, tiny_fourm
from mask_rule_checks import evaluate_mask_mod, flex_backward_on_cpu

from polymodal.families.fourm.model.fourm import DecoderSelfAttentionRule, decoder_self_attention_mask

FLEX_CPU_BACKWARD = flex_backward_on_cpu()


def with_empty_first_sample(batch: dict) -> dict:
    empty = {name: dict(entry) for name, entry in batch.items()}
    for entry in empty.values():
        entry["is_target"] = entry["is_target"].clone()
        entry["is_target"][0] = False
    return empty


def decoded(model, batch) -> tuple[torch.Tensor, DecoderSelfAttentionRule]:
    inputs = model.embed_inputs(batch)
    context = model.decoder_context(model.encode(inputs), inputs)
    queries = model.embed_targets(batch)
    return model.decode(queries, context, inputs.valid), DecoderSelfAttentionRule(queries)


def test_the_decoder_rule_is_the_dense_decoder_mask_plus_padding_queries_attending_themselves():
    model = tiny_fourm()
    _, rule = decoded(model, with_empty_first_sample(random_batch(model.modalities, batch=3, seed=4)))
    dense = decoder_self_attention_mask(rule.queries)
    assert torch.equal(rule.dense(), dense)
    padding_rows = ~rule.queries.valid
    assert padding_rows[0].all() and not dense[0].any()
    expected = dense | (torch.eye(rule.seq_len, dtype=torch.bool) & padding_rows[:, :, None])[:, None]
    assert torch.equal(evaluate_mask_mod(rule), expected)


def test_a_flex_decoder_matches_the_dense_decoder():
    batch = with_empty_first_sample(random_batch(tiny_fourm().modalities, batch=3, seed=5))
    sdpa, flex = tiny_fourm(), tiny_fourm(attention="flex")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention on the CPU says it is unfused
        expected, _ = decoded(sdpa, batch)
        got, _ = decoded(flex, batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not FLEX_CPU_BACKWARD, reason=f"torch {torch.__version__} has no FlexAttention backward on the CPU")
def test_flex_decoder_gradients_match_the_dense_decoder():
    batch = random_batch(tiny_fourm().modalities, batch=3, seed=6)
    grads = []
    for model in (tiny_fourm(), tiny_fourm(attention="flex")):
        hidden, _ = decoded(model, batch)
        hidden.square().sum().backward()
        grads.append([param.grad for param in model.parameters() if param.grad is not None])
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_an_unknown_attention_kernel_is_named():
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny_fourm(attention="flash")
