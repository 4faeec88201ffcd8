import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from polymodal.models.llm import build_llm
from polymodal.models.meta import call_block, checking_keys
from polymodal.objectives.lm import NextTokenLoss


def tiny(**overrides):
    settings = dict(vocab_size=97, dim=32, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=64, multiple_of=8)
    settings.update(overrides)
    torch.manual_seed(0)
    return build_llm(**settings)


def batch(tokens: torch.Tensor, documents: torch.Tensor) -> dict:
    positions = torch.zeros_like(tokens)
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            same = documents[b, t] == documents[b, t - 1]
            positions[b, t] = positions[b, t - 1] + 1 if same else 0
    return {"input_ids": tokens, "document_ids": documents, "position_ids": positions}


def test_forward_shapes_and_declared_keys_hold_under_checking():
    model = tiny()
    tokens = torch.randint(0, 97, (2, 16))
    with checking_keys():
        out = call_block(model, batch(tokens, torch.zeros_like(tokens)))
    assert out["logits"].shape == (2, 16, 97)
    assert set(model.read_keys) == {"input_ids", "document_ids", "kv_cache", "position_ids", "target_ids"}
    with checking_keys():  # kv_cache and target_ids are optional reads
        out = call_block(model, batch(tokens, torch.zeros_like(tokens)) | {"target_ids": tokens})
    assert "logits" not in out and out["token_loss"].count == 32


def test_documents_do_not_see_each_other():
    """A token's logits depend only on earlier tokens of its own document (positions restart per document)."""
    model = tiny().eval()
    documents = torch.tensor([[0] * 6 + [1] * 10])
    tokens = torch.randint(0, 97, (1, 16))
    other = tokens.clone()
    other[0, :6] = torch.randint(0, 97, (6,))  # change the first document only
    with torch.no_grad():
        a = model(batch(tokens, documents))["logits"]
        b = model(batch(other, documents))["logits"]
        alone = model(batch(tokens[:, 6:], torch.zeros(1, 10, dtype=torch.long)))["logits"]
    torch.testing.assert_close(a[:, 6:], b[:, 6:])
    torch.testing.assert_close(a[:, 6:], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, :6], b[:, :6])


def test_tied_embeddings_share_one_parameter():
    model = tiny(tie_embeddings=True)
    assert model.head.proj.weight is model.preprocessor.blocks[0].embedding.weight
    untied = tiny(tie_embeddings=False)
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters()) == 97 * 32


def plain_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA written out, so FlopCounterMode sees its two matmuls (it does not count CPU fused SDPA kernels)."""
    scores = q @ k.transpose(-2, -1) * (scale or q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(-1) @ v


def test_analytic_flops_match_flop_counter(monkeypatch):
    model = tiny(dim=64, depth=2, num_heads=4, num_kv_heads=4, vocab_size=256, max_seq_len=128)
    tokens = torch.randint(0, 256, (2, 128))
    data = batch(tokens, torch.zeros_like(tokens))
    monkeypatch.setattr(F, "scaled_dot_product_attention", plain_attention)
    with FlopCounterMode(display=False) as counter:
        model(dict(data))
    counted_training = 3 * counter.get_total_flops()
    analytic = model.train_flops(data)
    assert analytic == pytest.approx(counted_training, rel=0.05)


def test_next_token_loss_matches_plain_cross_entropy_and_ignores_padding():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[1, 3:] = -100
    loss, metrics = NextTokenLoss()({"logits": logits, "target_ids": targets})
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected)
    valid = targets != -100
    log_z = torch.logsumexp(logits, -1)[valid]
    torch.testing.assert_close(metrics["log_z_squared"], (log_z**2).mean())
    assert "z_loss" not in metrics

    with_z, z_metrics = NextTokenLoss(z_loss_weight=0.1)({"logits": logits, "target_ids": targets})
    torch.testing.assert_close(with_z, expected + 0.1 * (log_z**2).mean())
    torch.testing.assert_close(z_metrics["z_loss"], 0.1 * (log_z**2).mean())  # printed as it enters the loss
    torch.testing.assert_close(with_z, z_metrics["cross_entropy"] + z_metrics["z_loss"])


def naive_generation(model, prompt: torch.Tensor, steps: int, pick) -> torch.Tensor:
    """The plain loop: run the whole sequence, take the last position's logits, append ``pick(logits)``."""
    tokens = prompt
    for _ in range(steps):
        window = tokens[:, -model.max_seq_len :]
        positions = torch.arange(window.shape[1]).expand_as(window)
        logits = model({"input_ids": window, "document_ids": torch.zeros_like(window), "position_ids": positions})
        tokens = torch.cat([tokens, pick(logits["logits"][:, -1])[:, None]], dim=1)
    return tokens


@torch.no_grad()
def test_greedy_generation_is_the_argmax_loop_and_slides_past_max_seq_len():
    model = tiny(max_seq_len=16).eval()
    prompt = torch.randint(0, 97, (2, 10))
    generated = model.generate(prompt, 12, temperature=0.0)
    assert generated.shape == (2, 22) and torch.equal(generated[:, :10], prompt)
    assert torch.equal(generated, naive_generation(model, prompt, 12, lambda logits: logits.argmax(-1)))


@torch.no_grad()
def test_sampling_draws_from_the_filtered_tempered_softmax_with_the_generator():
    model = tiny().eval()
    prompt = torch.randint(0, 97, (3, 5))
    reference = torch.Generator().manual_seed(7)

    def draw(logits):
        kept = logits.masked_fill(logits < logits.topk(10, dim=-1).values[:, -1:], float("-inf"))
        return torch.multinomial(F.softmax(kept / 0.7, dim=-1), 1, generator=reference)[:, 0]

    expected = naive_generation(model, prompt, 6, draw)
    generated = model.generate(prompt, 6, temperature=0.7, top_k=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(generated, expected)


@torch.no_grad()
def test_a_row_that_stopped_repeats_the_stop_token_and_bad_arguments_are_named():
    model = tiny().eval()
    prompt = torch.randint(0, 97, (4, 3))
    free = model.generate(prompt, 8, temperature=0.0)
    stop = int(free[0, 5])  # row 0 produces it at step 3
    stopped = model.generate(prompt, 8, temperature=0.0, stop_id=stop)
    for row in range(4):
        new = free[row, 3:].tolist()
        cut = new.index(stop) + 1 if stop in new else len(new)
        assert stopped[row, 3 : 3 + cut].tolist() == new[:cut]
        assert (stopped[row, 3 + cut :] == stop).all()
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        model.generate(prompt, -1)
