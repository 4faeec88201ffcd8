"""4M embeddings: patch order, sequence position counting, teacher-forcing shift, sin-cos tables, bad input."""

import pytest
import torch
from fourm_test_batches import tiny_registry

from polymodal.families.fourm.model.embeddings import (
    ImagePatchEncoderEmbedding,
    ImageTokenDecoderEmbedding,
    SequenceDecoderEmbedding,
    SequenceEncoderEmbedding,
    sincos_table,
)
from polymodal.models.layers.posembed import sincos_1d, sincos_2d

DIM = 16


def test_patch_vectors_are_ordered_row_col_channel():
    spec = tiny_registry()["rgb@32"]  # 8x8 patches on a 32x32 image: 4x4 grid
    embedding = ImagePatchEncoderEmbedding(spec, DIM)
    pixels = torch.randn(2, 3, 32, 32)
    x, emb = embedding(pixels, torch.ones(2, 16, dtype=torch.bool))
    row, col = 1, 2  # token 6 = row 1, col 2 of the grid
    patch = pixels[:, :, 8 * row : 8 * row + 8, 8 * col : 8 * col + 8]  # [B, c, ph, pw]
    vector = patch.permute(0, 2, 3, 1).reshape(2, -1)  # (ph, pw, c), channel fastest
    torch.testing.assert_close(x[:, 4 * row + col], vector @ embedding.proj.weight.T)
    assert embedding.proj.bias is None
    assert sorted(embedding.state_dict()) == ["mod_emb", "proj.weight"]  # the checkpoint keys of 4M
    torch.testing.assert_close(emb[1], (embedding.pos_emb + embedding.mod_emb)[0])
    torch.testing.assert_close(embedding.pos_emb[0], sincos_2d(4, 4, DIM))


def test_sequence_input_positions_count_input_tokens():
    spec = tiny_registry()["caption"]
    embedding = SequenceEncoderEmbedding(spec, DIM)
    tokens = torch.tensor([[7, 8, 9, 0, 0, 0, 4, 5, 6, 0, 0, 0, 0, 0]])
    is_input = tokens.new_zeros(tokens.shape, dtype=torch.bool)
    is_input[0, :3] = True
    x, emb = embedding(tokens, is_input)
    table = sincos_1d(spec.num_positions(), DIM)
    torch.testing.assert_close(emb[0, :3], table[:3] + embedding.mod_emb[0, 0])
    torch.testing.assert_close(x[0], embedding.token_emb.weight[tokens[0]])
    assert (embedding.token_emb.weight[0] == 0).all()  # PAD row


def test_sequence_decoder_shifts_for_next_token_prediction():
    spec = tiny_registry()["caption"]
    embedding = SequenceDecoderEmbedding(spec, DIM)
    tokens = torch.tensor([[7, 8, 0, 0, 0, 0, 4, 5, 6, 3, 0, 0, 0, 0]])  # target run [S]=4, 5, 6, 3 at offset 6
    is_target = torch.zeros_like(tokens, dtype=torch.bool)
    is_target[0, 6:10] = True
    x, emb, valid, target_ids = embedding(tokens, is_target)
    assert valid[0].nonzero().flatten().tolist() == [6, 7, 8]  # position i valid iff i and i+1 are targets
    assert target_ids[0, 6:9].tolist() == [5, 6, 3]  # each predicts the next token; the sentinel is never predicted
    torch.testing.assert_close(x[0, 6:9], embedding.token_emb.weight[tokens[0, 6:9]])
    table = sincos_1d(spec.num_positions(), DIM)
    torch.testing.assert_close(emb[0, 6:9], table[:3] + embedding.mod_emb[0, 0])  # the sentinel is position 0


def test_image_decoder_predicts_every_target_position():
    spec = tiny_registry()["tok_rgb@32"]
    embedding = ImageTokenDecoderEmbedding(spec, DIM)
    ids = torch.randint(0, 40, (2, 4, 4))
    is_target = torch.rand(2, 16) < 0.5
    x, emb, valid, target_ids = embedding(ids, is_target)
    assert x is None and torch.equal(valid, is_target) and torch.equal(target_ids, ids.reshape(2, 16))
    assert emb.shape == (2, 16, DIM)


def test_learned_positions_when_not_sincos():
    registry_spec = tiny_registry()["tok_rgb@32"]
    spec = type(registry_spec)(**{**vars(registry_spec), "sincos_pos_emb": False})
    embedding = ImageTokenDecoderEmbedding(spec, DIM)
    assert isinstance(embedding.pos_emb, torch.nn.Parameter) and embedding.pos_emb.std() > 0
    assert "pos_emb" not in dict(ImageTokenDecoderEmbedding(registry_spec, DIM).named_parameters())


def test_sincos_table_sizes():
    registry = tiny_registry()
    assert sincos_table(registry["caption"], DIM).shape == (2 * (6 + 1), DIM)
    assert sincos_table(registry["tok_rgb@32"], DIM).shape == (16, DIM)


def test_bad_inputs_are_named():
    registry = tiny_registry()
    with pytest.raises(ValueError, match=r"modality 'rgb@32': pixels must be \[B, 3, 32, 32\]"):
        ImagePatchEncoderEmbedding(registry["rgb@32"], DIM)(torch.zeros(1, 3, 16, 16), None)
    with pytest.raises(ValueError, match="modality 'tok_rgb@32': 9 tokens per sample"):
        ImageTokenDecoderEmbedding(registry["tok_rgb@32"], DIM)(torch.zeros(1, 9, dtype=torch.long), None)
    with pytest.raises(ValueError, match="row of 20 positions, longer than its 14"):
        tokens = torch.zeros(1, 20, dtype=torch.long)
        SequenceEncoderEmbedding(registry["caption"], DIM)(tokens, tokens.bool())
