"""``seq_emb`` layout: the masked rows are unchanged, and besides the (B, L, E) output only the kept rows are
allocated."""

import torch
from torch.profiler import ProfilerActivity, profile

from polymodal.families.fourm.masking.masker import draw_dropped, embedding_output
from polymodal.families.fourm.masking.spans import span_corrupt

BATCH, LENGTH, WIDTH, POSITIONS = 16, 9, 64, 12


def masked_layout(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(embeddings, masked entry, input source) for a random batch of right-padded vector sequences."""
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(BATCH, LENGTH, WIDTH, generator=g)
    valid = torch.arange(LENGTH) < torch.randint(0, LENGTH + 1, (BATCH,), generator=g)[:, None]
    budget = torch.randint(0, LENGTH + 1, (BATCH,), generator=g)
    dropped = draw_dropped(valid, torch.rand(BATCH, generator=g, dtype=torch.float64), budget, g)
    ids = torch.arange(1, LENGTH + 1).expand(BATCH, LENGTH)
    corruption = span_corrupt(ids, valid, dropped, first_sentinel_id=1000)
    input_length = torch.where(budget > 0, corruption.input_lengths, 0)
    return embeddings, embedding_output(corruption, input_length, embeddings, POSITIONS), corruption.input_source


def test_rows_are_the_kept_vectors_in_order_and_zero_elsewhere():
    for seed in range(5):
        embeddings, out, source = masked_layout(seed)
        expected = torch.zeros(BATCH, POSITIONS, WIDTH)
        for b in range(BATCH):
            for i in range(int(out["is_input"][b].sum())):
                if source[b, i] >= 0:
                    expected[b, i] = embeddings[b, source[b, i]]
        assert torch.equal(out["tensor"], expected) and not out["is_target"].any()


def test_only_the_output_and_the_kept_rows_are_allocated():
    embeddings, _, _ = masked_layout(0)
    g = torch.Generator().manual_seed(1)
    valid = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    dropped = draw_dropped(valid, torch.full((BATCH,), 0.5, dtype=torch.float64), torch.full((BATCH,), 99), g)
    corruption = span_corrupt(torch.arange(1, LENGTH + 1).expand(BATCH, LENGTH), valid, dropped, 1000)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        embedding_output(corruption, corruption.input_lengths, embeddings, POSITIONS)
    allocated = sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())
    row = WIDTH * embeddings.element_size()
    kept_rows = int((corruption.input_source >= 0).sum())
    assert BATCH * POSITIONS * row <= allocated < (BATCH * POSITIONS + kept_rows) * row * 1.1
