"""The fast attention paths against the dense bool-mask path: a CausalMask (SDPA's is_causal, also with the query
offset of a sequence split across ranks), the LLM's one-document rows, and FlexAttention block masks of the
document-causal and prefix-causal rules. Outputs and gradients, with grouped-query attention."""

import warnings

import pytest
import torch
from mask_rule_checks import evaluate_mask_mod, flex_backward_on_cpu, plain_attention

from polymodal.models.layers.attention import Attention, masked_attention
from polymodal.models.layers.mask_rules import (
    CausalMask,
    DocumentCausalRule,
    PrefixCausalRule,
    flex_block_mask,
    resolve_mask,
)
from polymodal.models.layers.masks import causal_mask, document_mask
from polymodal.models.llm import build_llm
from polymodal.models.parts import DocumentCausalMask, TransformerTrunk

TOL = dict(atol=1e-5, rtol=1e-5)
FLEX_CPU_BACKWARD = flex_backward_on_cpu()


def qkv(batch=2, heads=4, kv_heads=2, seq=12, head_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, seq, head_dim), (batch, kv_heads, seq, head_dim), (batch, kv_heads, seq, head_dim)]
    return [torch.randn(shape, generator=generator, requires_grad=True) for shape in shapes]


def output_and_grads(attend, q, k, v):
    """``attend``'s output and the gradients of a fixed random projection of it with respect to q, k and v."""
    out = attend(q, k, v)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    return out.detach(), grads


def assert_same(got, expected):
    torch.testing.assert_close(got[0], expected[0], **TOL)
    for got_grad, expected_grad in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(got_grad, expected_grad, **TOL)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize(("q_offset", "q_len"), [(0, 12), (4, 4), (8, 4), (0, 6)])
def test_causal_mask_matches_the_dense_causal_mask(kv_heads, q_offset, q_len):
    """Queries ``q_offset .. q_offset + q_len`` of a 12-token sequence against all its keys: a CP rank's rows."""
    q, k, v = qkv(kv_heads=kv_heads)
    rows = slice(q_offset, q_offset + q_len)
    q_rows = q[:, :, rows].detach().requires_grad_()
    fast = output_and_grads(lambda q, k, v: masked_attention(q, k, v, CausalMask(), q_offset=q_offset), q_rows, k, v)
    dense = output_and_grads(
        lambda q, k, v: masked_attention(q, k, v, causal_mask(12)[None, None], q_offset=q_offset), q_rows, k, v
    )
    plain = output_and_grads(lambda q, k, v: plain_attention(q, k, v, causal_mask(12)[rows]), q_rows, k, v)
    assert_same(fast, dense)
    assert_same(fast, plain)


def test_a_causal_mask_is_causal_whatever_is_causal_says():
    torch.manual_seed(0)
    attention = Attention(16, num_heads=4, num_kv_heads=2)
    x = torch.randn(2, 6, 16)
    expected = attention(x, causal_mask(6), is_causal=False)
    for is_causal in (False, True):
        torch.testing.assert_close(attention(x, CausalMask(), is_causal=is_causal), expected, **TOL)


def test_document_causal_mask_writes_a_causal_mask_only_when_every_row_is_one_document():
    block = DocumentCausalMask()
    one_each = torch.tensor([[3, 3, 3, 3], [7, 7, 7, 7]])
    assert isinstance(block({"document_ids": one_each})["attn_mask"], CausalMask)
    two_in_a_row = torch.tensor([[3, 3, 3, 3], [7, 7, 8, 8]])
    rule = block({"document_ids": two_in_a_row})["attn_mask"]
    assert isinstance(rule, DocumentCausalRule)
    assert torch.equal(rule.dense(), document_mask(two_in_a_row))
    assert torch.equal(evaluate_mask_mod(rule), rule.dense())


def tiny_llm(**overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=64, dim=32, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=16, multiple_of=16)
    return build_llm(**(settings | overrides))


def llm_batch(documents: torch.Tensor) -> dict:
    tokens = torch.randint(0, 64, documents.shape, generator=torch.Generator().manual_seed(1))
    positions = torch.arange(documents.shape[1]).expand_as(documents).clone()
    return {"input_ids": tokens, "document_ids": documents, "position_ids": positions}


def llm_logits_and_grads(model, batch, dense: bool):
    """The LLM's logits and parameter gradients: through its own parts, or with the dense document mask written in
    place of what its mask block writes (the reference path)."""
    model.zero_grad()
    data = dict(batch)
    for block in model.preprocessor.blocks:
        data = block(data)
    if dense:
        data["attn_mask"] = document_mask(batch["document_ids"])
    logits = model.head(model.trunk(data))["logits"]
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    (logits * weights).sum().backward()
    return logits.detach(), [param.grad.clone() for param in model.parameters()], data["attn_mask"]


@pytest.mark.parametrize(
    ("documents", "fast_kind"),
    [
        (torch.tensor([[0] * 10, [5] * 10]), CausalMask),
        (torch.tensor([[0] * 10, [5] * 4 + [6] * 6]), DocumentCausalRule),  # one row of two: the dense mask
    ],
)
def test_llm_matches_the_dense_document_mask(documents, fast_kind):
    model = tiny_llm()
    batch = llm_batch(documents)
    logits, grads, mask = llm_logits_and_grads(model, batch, dense=False)
    dense_logits, dense_grads, _ = llm_logits_and_grads(model, batch, dense=True)
    assert isinstance(mask, fast_kind)
    torch.testing.assert_close(logits, dense_logits, **TOL)
    for grad, dense_grad in zip(grads, dense_grads, strict=True):
        torch.testing.assert_close(grad, dense_grad, **TOL)


# ---------------------------------------------------------------------------------------------------- FlexAttention


def rules(seq: int = 12) -> dict:
    return {
        "document": DocumentCausalRule(torch.tensor([[0] * 5 + [1] * 7, [2] * seq])),
        "prefix": PrefixCausalRule(torch.tensor([3, 0]), seq),
    }


@pytest.mark.parametrize("name", ["document", "prefix"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_flex_block_masks_match_the_dense_masks(name, kv_heads):
    rule = rules()[name]
    assert torch.equal(evaluate_mask_mod(rule), rule.dense())
    q, k, v = (tensor.detach() for tensor in qkv(kv_heads=kv_heads))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention on the CPU says it is unfused
        flex = masked_attention(q, k, v, flex_block_mask(rule))
    torch.testing.assert_close(flex, masked_attention(q, k, v, rule.dense()), **TOL)
    torch.testing.assert_close(flex, plain_attention(q, k, v, rule.dense()), **TOL)


@pytest.mark.skipif(not FLEX_CPU_BACKWARD, reason=f"torch {torch.__version__} has no FlexAttention backward on the CPU")
@pytest.mark.parametrize("name", ["document", "prefix"])
def test_flex_block_mask_gradients_match_the_dense_masks(name):
    rule = rules()[name]
    q, k, v = qkv()
    assert_same(
        output_and_grads(lambda q, k, v: masked_attention(q, k, v, flex_block_mask(rule)), q, k, v),
        output_and_grads(lambda q, k, v: masked_attention(q, k, v, rule.dense()), q, k, v),
    )


def test_a_flex_trunk_matches_an_sdpa_trunk():
    batch = llm_batch(torch.tensor([[0] * 10, [5] * 4 + [6] * 6]))
    sdpa, flex = tiny_llm(), tiny_llm(attention="flex")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(flex(dict(batch))["logits"], sdpa(dict(batch))["logits"], **TOL)


def test_resolve_mask_folds_is_causal_into_a_block_mask():
    rule = rules()["prefix"]
    block_mask, is_causal = resolve_mask(rule, "flex", is_causal=True)
    assert not is_causal
    q, k, v = (tensor.detach() for tensor in qkv())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = masked_attention(q, k, v, block_mask)
    torch.testing.assert_close(flex, masked_attention(q, k, v, rule.dense(), is_causal=True), **TOL)
    dense, is_causal = resolve_mask(rule, "sdpa", is_causal=True)
    assert is_causal and torch.equal(dense, rule.dense())


def test_bad_masks_and_kernels_are_clear_errors():
    q, k, v = (tensor.detach() for tensor in qkv())
    rule = rules()["document"]
    with pytest.raises(TypeError, match="resolve_mask"):
        masked_attention(q, k, v, rule)
    with pytest.raises(ValueError, match="is_causal"):
        masked_attention(q, k, v, flex_block_mask(rule), is_causal=True)
    with pytest.raises(ValueError, match="keys up to position 16"):
        masked_attention(q, k, v, CausalMask(), q_offset=4)
    with pytest.raises(ValueError, match="attention must be one of"):
        TransformerTrunk(tiny_llm().trunk.transformer, attention="flash")
