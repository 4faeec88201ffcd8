import pytest
import torch

from polymodal.models.layers import attention as attention_module
from polymodal.models.layers.attention import Attention
from polymodal.models.layers.masks import causal_mask, document_mask, padding_mask
from polymodal.models.layers.norm import PerHeadLayerNorm
from polymodal.models.layers.rope import RotaryEmbedding


def naive_attention(attn: Attention, x: torch.Tensor, mask: torch.Tensor | None = None, position_ids=None):
    """Plain softmax attention: explicit projections, kv head repetition, -inf masking, einsum."""
    batch, seq_len, _ = x.shape
    heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim

    def project(linear: torch.nn.Linear, num: int) -> torch.Tensor:
        out = x @ linear.weight.T + (0 if linear.bias is None else linear.bias)
        return out.view(batch, seq_len, num, head_dim)

    q, k, v = project(attn.q_proj, heads), project(attn.k_proj, kv_heads), project(attn.v_proj, kv_heads)
    if isinstance(attn.q_norm, PerHeadLayerNorm):  # Chameleon: per-head weight and bias [heads, head_dim]

        def standardise(t: torch.Tensor) -> torch.Tensor:
            centred = t - t.mean(-1, keepdim=True)
            return centred * torch.rsqrt((centred**2).mean(-1, keepdim=True) + 1e-5)

        q = standardise(q) * attn.q_norm.weight + attn.q_norm.bias
        k = standardise(k) * attn.k_norm.weight + attn.k_norm.bias
    elif attn.q_norm is not None:
        q = q * torch.rsqrt((q**2).mean(-1, keepdim=True) + 1e-6) * attn.q_norm.weight
        k = k * torch.rsqrt((k**2).mean(-1, keepdim=True) + 1e-6) * attn.k_norm.weight
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if attn.rope is not None:
        q, k = attn.rope(q, k, position_ids)
    group = heads // kv_heads
    k = torch.stack([k[:, h // group] for h in range(heads)], dim=1)
    v = torch.stack([v[:, h // group] for h in range(heads)], dim=1)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / head_dim**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.expand_as(scores), float("-inf"))
    out = torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1), v)
    out = out.transpose(1, 2).reshape(batch, seq_len, heads * head_dim)
    return out @ attn.o_proj.weight.T + (0 if attn.o_proj.bias is None else attn.o_proj.bias)


def make_attention(**kwargs) -> Attention:
    torch.manual_seed(0)
    attn = Attention(**{"dim": 32, "num_heads": 4, **kwargs})
    with torch.no_grad():
        for parameter in attn.parameters():
            parameter.normal_(std=0.3)
    return attn.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_kv_heads": 2},
        {"num_kv_heads": 1, "qkv_bias": True, "out_bias": True},
        {"qk_norm": True},
        {"head_dim": 12},
        {"num_kv_heads": 2, "rope": RotaryEmbedding(8, 32), "qk_norm": True},
        {"qk_norm": "rmsnorm"},
        {"qk_norm": "per_head_layernorm"},
        {"num_kv_heads": 2, "rope": RotaryEmbedding(8, 32), "qk_norm": "per_head_layernorm"},
    ],
)
def test_attention_matches_naive_reference(kwargs):
    attn = make_attention(**kwargs)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attn(x, is_causal=True), naive_attention(attn, x, causal_mask(7)), atol=1e-5, rtol=1e-4)


def test_attention_with_position_ids_matches_reference():
    attn = make_attention(rope=RotaryEmbedding(8, 32))
    x = torch.randn(2, 5, 32)
    position_ids = torch.tensor([[4, 0, 7, 1, 2], [9, 8, 7, 6, 5]])
    torch.testing.assert_close(
        attn(x, position_ids=position_ids),
        naive_attention(attn, x, position_ids=position_ids),
        atol=1e-5,
        rtol=1e-4,
    )


def test_mask_and_is_causal_are_combined():
    attn = make_attention(num_kv_heads=2)
    x = torch.randn(2, 6, 32)
    doc_mask = document_mask(torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 2]]), causal=False)
    expected = naive_attention(attn, x, doc_mask & causal_mask(6))
    torch.testing.assert_close(attn(x, mask=doc_mask, is_causal=True), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attn(x, mask=doc_mask), naive_attention(attn, x, doc_mask), atol=1e-5, rtol=1e-4)


def test_mask_changes_the_output():
    attn = make_attention()
    x = torch.randn(1, 6, 32)
    mask = padding_mask(torch.tensor([[True, True, True, False, False, True]]))
    unmasked, masked = attn(x), attn(x, mask=mask)
    assert not torch.allclose(unmasked, masked)
    assert not torch.allclose(attn(x, is_causal=True), attn(x, mask=mask, is_causal=True))


def test_gqa_equals_mha_with_repeated_kv_weights():
    gqa = make_attention(num_kv_heads=2)
    mha = Attention(dim=32, num_heads=4).eval()
    head_dim = gqa.head_dim
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            per_head = getattr(gqa, name).weight.view(2, head_dim, 32)
            getattr(mha, name).weight.copy_(per_head.repeat_interleave(2, dim=0).reshape(4 * head_dim, 32))
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(gqa(x, is_causal=True), mha(x, is_causal=True), atol=1e-5, rtol=1e-4)


def test_gqa_fallback_without_enable_gqa_matches(monkeypatch):
    attn = make_attention(num_kv_heads=2)
    x = torch.randn(2, 5, 32)
    mask = padding_mask(torch.tensor([[True] * 5, [True, True, True, False, False]]))
    native = attn(x, mask=mask, is_causal=True)
    monkeypatch.setattr(attention_module, "SDPA_SUPPORTS_ENABLE_GQA", False)
    torch.testing.assert_close(attn(x, mask=mask, is_causal=True), native, atol=1e-6, rtol=1e-5)


def test_padded_query_rows_are_finite_and_valid_rows_exact():
    attn = make_attention(num_kv_heads=2)
    x = torch.randn(3, 5, 32)
    valid = torch.tensor(
        [
            [False, False, True, True, True],  # left padding: under causal, rows 0 and 1 have no key
            [True, True, True, False, False],  # right padding
            [False, False, False, False, False],  # padding only
        ]
    )
    out = attn(x, mask=padding_mask(valid), is_causal=True)
    assert torch.isfinite(out).all()
    reference = naive_attention(attn, x, padding_mask(valid) & causal_mask(5))
    torch.testing.assert_close(out[valid], reference[valid], atol=1e-5, rtol=1e-4)
    # A query with nothing to attend attends itself: its output is o_proj(v_i).
    self_only = attn.o_proj(attn.v_proj(x[2]).view(5, 2, 8).repeat_interleave(2, dim=1).reshape(5, 32))
    torch.testing.assert_close(out[2], self_only, atol=1e-5, rtol=1e-4)


def test_dropout_only_in_training():
    attn = make_attention(dropout=0.5)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), atol=1e-5, rtol=1e-4)
    attn.train()
    torch.manual_seed(1)
    assert not torch.allclose(attn(x), naive_attention(attn, x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 4, "num_kv_heads": 3}, "divisible by num_kv_heads"),
        ({"num_heads": 5}, "divisible by num_heads"),
        ({"num_heads": 4, "rope": RotaryEmbedding(16, 8)}, "head_dim"),
        ({"num_heads": 4, "dropout": 1.0}, "dropout"),
        ({"num_heads": 0}, "num_heads"),
        ({"num_heads": 4, "qk_norm": "layernorm"}, "qk_norm"),
    ],
)
def test_attention_rejects_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Attention(dim=32, **kwargs)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda attn: attn(torch.randn(4, 32)), r"\[B, T, D\]"),
        (lambda attn: attn(torch.randn(1, 4, 32), mask=torch.ones(4, 4)), "bool"),
        (lambda attn: attn(torch.randn(1, 4, 32), mask=torch.ones(3, 3, dtype=torch.bool)), "broadcast"),
        (
            lambda attn: attn(torch.randn(2, 4, 32), mask=torch.ones(3, 1, 4, 4, dtype=torch.bool)),
            "broadcast",
        ),
        (lambda attn: attn(torch.randn(1, 4, 32), position_ids=torch.arange(4)[None]), "no rope"),
    ],
)
def test_attention_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(make_attention())
