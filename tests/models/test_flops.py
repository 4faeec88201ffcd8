import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from polymodal.models.flops import matmul_params, transformer_train_flops_per_token


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class _TinyDecoder(nn.Module):
    def __init__(self, vocab: int, dim: int, n_layers: int, n_heads: int, seq_len: int) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(tokens) + self.pos_emb(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


VOCAB, DIM, LAYERS, HEADS, SEQ, BATCH = 128, 64, 2, 4, 256, 2


def _counted_flops(model: nn.Module, tokens: torch.Tensor, backward: bool) -> int:
    # FlopCounterMode does not see the fused CPU flash-attention kernel; the math backend runs as bmm's.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(tokens)
        if backward:
            logits.float().pow(2).mean().backward()
    return counter.get_total_flops()


def test_matmul_params_counts_linear_weights_only():
    model = _TinyDecoder(VOCAB, DIM, LAYERS, HEADS, SEQ)
    expected = LAYERS * (3 * DIM * DIM + DIM * DIM + 8 * DIM * DIM) + DIM * VOCAB
    assert matmul_params(model) == expected
    assert matmul_params(model, exclude_types=(_Block,)) == DIM * VOCAB
    assert matmul_params(model, exclude_types=(_TinyDecoder,)) == 0


def test_matmul_params_counts_tied_head_once():
    model = _TinyDecoder(VOCAB, DIM, LAYERS, HEADS, SEQ)
    model.head.weight = model.tok_emb.weight
    extra = nn.Linear(DIM, VOCAB, bias=False)
    extra.weight = model.head.weight
    model.extra = extra
    assert matmul_params(model) == LAYERS * 12 * DIM * DIM + DIM * VOCAB


def test_analytic_training_flops_match_flop_counter():
    torch.manual_seed(0)
    model = _TinyDecoder(VOCAB, DIM, LAYERS, HEADS, SEQ)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    per_token = transformer_train_flops_per_token(matmul_params(model), LAYERS, DIM, SEQ)
    analytic = per_token * BATCH * SEQ
    attention_share = 12 * LAYERS * DIM * SEQ / per_token
    assert attention_share > 0.3  # the T-dependent term really is exercised

    forward = _counted_flops(model, tokens, backward=False)
    assert analytic == pytest.approx(3 * forward, rel=0.05)
    assert analytic == pytest.approx(_counted_flops(model, tokens, backward=True), rel=0.05)


def test_transformer_flops_formula_and_bad_input():
    assert transformer_train_flops_per_token(1000, 2, 8, 16) == 6 * 1000 + 12 * 2 * 8 * 16
    with pytest.raises(ValueError, match="seq_len"):
        transformer_train_flops_per_token(1000, 2, 8, -1)
