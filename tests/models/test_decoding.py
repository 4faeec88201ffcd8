"""Decoding with the key/value cache: every row of a left-padded batch gets the logits a full recompute of that row
alone gives, and ``CausalLM.generate`` runs each new token through the model once."""

import pytest
import torch

from polymodal.models.decoding import IncrementalDecoder
from polymodal.models.layers.kv_cache import KVCache
from polymodal.models.llm import build_llm
from polymodal.models.meta import checking_keys


def tiny(**overrides):
    settings = dict(vocab_size=97, dim=32, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=64, multiple_of=8)
    settings.update(overrides)
    torch.manual_seed(0)
    return build_llm(**settings).eval()


def recomputed(model, row: torch.Tensor) -> torch.Tensor:
    """The next-token logits after ``row`` from a plain forward of the whole row (no cache, no padding)."""
    batch = {
        "input_ids": row[None],
        "document_ids": torch.zeros_like(row[None]),
        "position_ids": torch.arange(len(row))[None],
    }
    return model(batch)["logits"][0, -1]


@pytest.mark.parametrize("num_kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("qk_norm", [False, "rmsnorm", "per_head_layernorm"])
@torch.no_grad()
def test_cached_logits_of_left_padded_rows_equal_a_full_recompute_of_each_row(num_kv_heads, qk_norm):
    model = tiny(num_kv_heads=num_kv_heads, qk_norm=qk_norm)
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 97, (n,), generator=generator) for n in (7, 2, 11, 1)]
    decoder = IncrementalDecoder(model, pad_id=5)
    steps = [(decoder.prefill(rows, room=8), rows)]
    for width in (1, 3, 1, 2, 1):  # several tokens at once too, as forced tokens are fed
        new = torch.randint(0, 97, (len(rows), width), generator=generator)
        rows = [torch.cat([row, extra]) for row, extra in zip(rows, new, strict=True)]
        steps.append((decoder.extend(new), rows))
    for logits, seen in steps:
        for b, row in enumerate(seen):
            torch.testing.assert_close(logits[b], recomputed(model, row), atol=1e-5, rtol=0)


@torch.no_grad()
def test_swin_norm_blocks_decode_alike_with_the_cache_a_declared_key():
    model = tiny(res_post_norm=True, qk_norm="per_head_layernorm")
    rows = [torch.tensor([3, 1, 4, 1, 5]), torch.tensor([9, 2])]
    decoder = IncrementalDecoder(model)
    with checking_keys():
        decoder.prefill(rows, room=1)
        logits = decoder.extend(torch.tensor([[6], [7]]))
    torch.testing.assert_close(logits[1], recomputed(model, torch.tensor([9, 2, 7])), atol=1e-5, rtol=0)


@torch.no_grad()
def test_generate_runs_each_new_token_once_and_matches_recomputing():
    model = tiny(max_seq_len=32)
    seen_lengths = []
    hook = model.preprocessor.blocks[0].register_forward_pre_hook(
        lambda _, inputs: seen_lengths.append(inputs[0]["input_ids"].shape[1])
    )
    prompt = torch.randint(0, 97, (3, 6))
    generated = model.generate(prompt, 5, temperature=0.0)
    hook.remove()
    assert seen_lengths == [6, 1, 1, 1, 1]
    tokens = prompt
    for _ in range(5):
        tokens = torch.cat([tokens, recomputed_batch(model, tokens).argmax(-1)[:, None]], dim=1)
    assert torch.equal(generated, tokens)


def recomputed_batch(model, tokens):
    return torch.stack([recomputed(model, row) for row in tokens])


def test_the_cache_refuses_more_positions_than_it_holds():
    model = tiny()
    decoder = IncrementalDecoder(model)
    with torch.no_grad():
        decoder.prefill([torch.tensor([1, 2, 3])], room=1)
        decoder.extend(torch.tensor([[4]]))
        with pytest.raises(ValueError, match="holds 4 positions"):
            decoder.extend(torch.tensor([[5]]))
    with pytest.raises(ValueError, match="at least one row"):
        decoder.prefill([torch.tensor([], dtype=torch.long)], room=1)
    with pytest.raises(ValueError, match="a row of 60 tokens and 5 more exceeds the model's 64 positions"):
        decoder.prefill([torch.zeros(60, dtype=torch.long)], room=5)
    with pytest.raises(RuntimeError, match="before prefill"):
        IncrementalDecoder(model).extend(torch.tensor([[1]]))


def test_the_mask_lets_a_token_attend_its_own_earlier_document_tokens_only():
    cache = KVCache(capacity=5)
    first = cache.extend_mask(torch.tensor([[-1, 0, 0]]))
    assert first[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    second = cache.extend_mask(torch.tensor([[0, 0]]))
    assert second.shape == (1, 1, 2, 5) and cache.length == 5
    assert second[0, 0].tolist() == [[False, True, True, True, False], [False, True, True, True, True]]
