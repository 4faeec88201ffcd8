"""``seq_emb`` layout: the masking hands the vectors over uncopied with a row index, and the model's embedding of
that is the embedding of 4M's laid-out block (kept rows first, a zero vector at each sentinel)."""

import torch
from torch.profiler import ProfilerActivity, profile

from polymodal.families.fourm.masking.masker import draw_dropped, embedding_output
from polymodal.families.fourm.masking.spans import span_corrupt
from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.families.fourm.model.embeddings import SequenceVectorEncoderEmbedding

BATCH, LENGTH, WIDTH, POSITIONS = 16, 9, 64, 12


def masked_layout(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(embeddings, masked entry, input source) for a random batch of right-padded vector sequences."""
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(BATCH, LENGTH, WIDTH, generator=g)
    valid = torch.arange(LENGTH) < torch.randint(0, LENGTH + 1, (BATCH,), generator=g)[:, None]
    budget = torch.randint(0, LENGTH + 1, (BATCH,), generator=g)
    dropped = draw_dropped(valid, torch.rand(BATCH, generator=g, dtype=torch.float64), budget, g)
    corruption = span_corrupt(torch.arange(1, LENGTH + 1).expand(BATCH, LENGTH), valid, dropped, 1000)
    input_length = torch.where(budget > 0, corruption.input_lengths, 0)
    return embeddings, embedding_output(corruption, input_length, embeddings, POSITIONS), corruption.input_source


def laid_out(embeddings: torch.Tensor, is_input: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """4M's block: input position i holds the vector of its source row, a zero vector at sentinels and after."""
    block = torch.zeros(BATCH, POSITIONS, WIDTH)
    for b in range(BATCH):
        for i in range(int(is_input[b].sum())):
            if source[b, i] >= 0:
                block[b, i] = embeddings[b, source[b, i]]
    return block


def test_the_model_embeds_the_row_index_as_the_laid_out_block():
    spec = ModalitySpec(name="t5_caption", kind="seq_emb", max_tokens=POSITIONS, embedding_dim=WIDTH, decoder=False)
    torch.manual_seed(0)
    embedding = SequenceVectorEncoderEmbedding(spec, 8)
    for seed in range(5):
        embeddings, out, source = masked_layout(seed)
        assert out["tensor"] is embeddings and not out["is_target"].any()
        x, emb = embedding(out["tensor"], out["is_input"], out["row_index"])
        expected_x, expected_emb = embedding(laid_out(embeddings, out["is_input"], source), out["is_input"])
        torch.testing.assert_close(x, expected_x)
        assert torch.equal(emb, expected_emb)


def test_no_vector_block_is_allocated():
    embeddings, _, _ = masked_layout(0)
    valid = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    keep = torch.full((BATCH,), 0.5, dtype=torch.float64)
    dropped = draw_dropped(valid, keep, torch.full((BATCH,), 99), torch.Generator().manual_seed(1))
    corruption = span_corrupt(torch.arange(1, LENGTH + 1).expand(BATCH, LENGTH), valid, dropped, 1000)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        embedding_output(corruption, corruption.input_lengths, embeddings, POSITIONS)
    allocated = sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())
    assert allocated < BATCH * POSITIONS * WIDTH * embeddings.element_size() / 8  # masks and indices only
