"""Attentive pooling against a plain computation of learned-query cross-attention, and its padding mask."""

import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.models.pooling import AttentivePooling, AttentivePoolingHead


def reference_pooling(pool: AttentivePooling, tokens: torch.Tensor, token_norm: bool = True) -> torch.Tensor:
    """LayerNorm the tokens (unless ``token_norm`` is off); per head, softmax(q·kᵀ/√d)·v for every learned query;
    project; mean over queries."""
    attention = pool.attention
    heads, head_dim = attention.num_heads, attention.head_dim
    context = tokens
    if token_norm:
        context = F.layer_norm(tokens, tokens.shape[-1:], pool.norm.weight, pool.norm.bias, pool.norm.eps)
    query = attention.q_proj(pool.query[0])  # [Q, D]
    keys, values = attention.k_proj(context), attention.v_proj(context)  # [B, T, D]
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = torch.einsum("qd,btd->bqt", query[:, part], keys[..., part]) / math.sqrt(head_dim)
        outputs.append(torch.einsum("bqt,btd->bqd", scores.softmax(-1), values[..., part]))
    return attention.o_proj(torch.cat(outputs, dim=-1)).mean(dim=1)


@pytest.mark.parametrize("num_queries", [1, 3])
def test_attentive_pooling_is_learned_query_cross_attention(num_queries):
    torch.manual_seed(0)
    pool = AttentivePooling(dim=8, num_heads=2, num_queries=num_queries)
    tokens = torch.randn(4, 5, 8)
    torch.testing.assert_close(pool(tokens), reference_pooling(pool, tokens))


def test_without_token_norm_the_queries_attend_the_raw_tokens():
    torch.manual_seed(0)
    pool = AttentivePooling(dim=8, num_heads=2, token_norm=False)
    tokens = torch.randn(4, 5, 8) * 3 + 1
    assert not any("norm" in name for name, _ in pool.named_parameters())
    torch.testing.assert_close(pool(tokens), reference_pooling(pool, tokens, token_norm=False))


def test_masked_tokens_do_not_change_the_pooled_vector():
    torch.manual_seed(0)
    pool = AttentivePooling(dim=8, num_heads=2)
    tokens = torch.randn(2, 4, 8)
    padded = torch.cat([tokens, torch.randn(2, 3, 8) * 100], dim=1)
    mask = torch.arange(7).expand(2, 7) < 4
    torch.testing.assert_close(pool(padded, mask), pool(tokens))


def test_head_reads_tokens_writes_logits_and_rejects_wrong_widths():
    torch.manual_seed(0)
    head = AttentivePoolingHead(dim=8, out_features=3, num_heads=2, read_key="patches", write_key="scores")
    out = head({"patches": torch.randn(2, 5, 8)})
    assert out["scores"].shape == (2, 3)
    assert head.read_keys == ("patches",) and head.write_keys == ("scores",)
    with pytest.raises(ValueError, match=r"tokens must be \[B, T, D=8\]"):
        head({"patches": torch.randn(2, 5, 6)})
