"""FourM: decoder mask, selection/truncation/padding, order invariance, sizes, meta-device init, overfitting."""

import pytest
import torch
from fourm_test_batches import random_batch, tiny_fourm, tiny_registry

from polymodal.families.fourm.loss import FourMLoss
from polymodal.families.fourm.model import build_fourm
from polymodal.families.fourm.model.fourm import DecoderQueries, decoder_self_attention_mask, valid_first_order


def test_decoder_mask_matches_upstream_test_vector():
    # upstream: compressed [4,0,0,0,1,1,1] with ids [a,a,a,a,b,b,b]: an image block of 4 then a sequence of 3
    index = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    queries = DecoderQueries(
        tokens=torch.zeros(1, 7, 2),
        emb=torch.zeros(1, 7, 2),
        valid=torch.ones(1, 7, dtype=torch.bool),
        target_ids=torch.zeros(1, 7, dtype=torch.long),
        modality_index=index,
        causal=index == 1,
        modalities=("a", "b"),
    )
    expected = torch.tensor([[1, 1, 1, 1, 0, 0, 0]] * 4 + [[0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0],
                                                            [0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)  # fmt: skip
    assert torch.equal(decoder_self_attention_mask(queries)[0, 0], expected)


def test_decoder_mask_never_lets_padding_be_attended():
    index = torch.tensor([[1, 0, 0, -1, -1]])
    valid = index >= 0
    queries = DecoderQueries(torch.zeros(1, 5, 2), torch.zeros(1, 5, 2), valid, torch.zeros(1, 5, dtype=torch.long),
                             index, (index == 0) & valid, ("img", "seq"))  # fmt: skip
    mask = decoder_self_attention_mask(queries)[0, 0]
    assert not mask[:, 3:].any() and not mask[3:].any()
    assert mask[2, 1] and not mask[1, 2]  # causal within the sequence


def test_valid_first_order_is_stable_and_truncates():
    valid = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    assert valid_first_order(valid, None).tolist() == [[1, 3, 4, 0, 2], [0, 1, 2, 3, 4]]
    assert valid_first_order(valid, 2).tolist() == [[1, 3], [0, 1]]


def loss_of(model, batch):
    return FourMLoss()(model(dict(batch)))[0]


def test_loss_is_invariant_to_modality_order():
    model = tiny_fourm().eval()
    batch = random_batch(model.modalities, batch=4, seed=1)
    reordered = {name: batch[name] for name in reversed(list(batch))}
    with torch.no_grad():
        torch.testing.assert_close(loss_of(model, reordered), loss_of(model, batch), atol=1e-6, rtol=1e-6)


def test_padding_rows_are_finite_and_do_not_change_other_rows():
    model = tiny_fourm(loss_chunk_size=None).eval()  # forward writes the logits
    batch = random_batch(model.modalities, batch=3, seed=2)
    empty = {name: dict(entry) for name, entry in batch.items()}
    for entry in empty.values():  # sample 0: no inputs and no targets at all, every position is padding
        entry["is_input"] = entry["is_input"].clone()
        entry["is_input"][0] = False
        entry["is_target"] = entry["is_target"].clone()
        entry["is_target"][0] = False
    with torch.no_grad():
        inputs = model.embed_inputs(empty)
        encoded = model.encode(inputs)
        context = model.decoder_context(encoded, inputs)
        queries = model.embed_targets(empty)
        hidden = model.decode(queries, context, inputs.valid)
        assert torch.isfinite(encoded).all() and torch.isfinite(hidden).all()
        # the other samples' predictions are those of a batch without sample 0
        rest = {name: {key: value[1:] for key, value in entry.items()} for name, entry in batch.items()}
        full, alone = model(dict(empty)), model(dict(rest))
    for name in full["logits"]:
        torch.testing.assert_close(full["logits"][name], alone["logits"][name], atol=1e-5, rtol=1e-5)


def test_truncation_keeps_selected_tokens_first_and_pads():
    model = tiny_fourm(num_encoder_tokens=12, num_decoder_tokens=9).eval()
    batch = random_batch(model.modalities, batch=3, seed=4)
    inputs = model.embed_inputs(batch)
    queries = model.embed_targets(batch)
    assert inputs.tokens.shape[1] == 12 and queries.tokens.shape[1] == 9
    selected = sum(entry["is_input"].sum(1) for entry in batch.values())
    assert inputs.valid.sum(1).tolist() == selected.clamp(max=12).tolist()
    assert not (inputs.valid[:, 1:] & ~inputs.valid[:, :-1]).any()  # valid first, then padding
    assert (inputs.tokens[~inputs.valid] == 0).all() and (inputs.emb[~inputs.valid] == 0).all()
    assert (queries.modality_index[~queries.valid] == -1).all() and (queries.tokens[~queries.valid] == 0).all()


def test_register_tokens_are_prepended_with_zero_emb():
    model = tiny_fourm(num_register_tokens=2)
    inputs = model.embed_inputs(random_batch(model.modalities, batch=2))
    assert inputs.valid[:, :2].all() and (inputs.emb[:, :2] == 0).all()
    torch.testing.assert_close(inputs.tokens[:, :2], model.register_tokens.expand(2, -1, -1))


def test_modality_embedding_is_shared_and_heads_tie_switchably():
    model = tiny_fourm()
    for name in ("caption", "tok_rgb@32"):
        assert model.decoder_embeddings[name].mod_emb is model.encoder_embeddings[name].mod_emb
    caption = model.decoder_embeddings["caption"]
    assert caption.to_logits.weight is caption.token_emb.weight
    untied = tiny_fourm(tie_embeddings=False).decoder_embeddings["caption"]
    assert untied.to_logits.weight is not untied.token_emb.weight


def test_modalities_not_in_the_model_are_ignored():
    model = tiny_fourm().eval()
    batch = random_batch(model.modalities, batch=2)
    extra = dict(batch, depth={"tensor": torch.zeros(2, 4), "is_input": torch.ones(2, 4, dtype=torch.bool)})
    with torch.no_grad():
        torch.testing.assert_close(loss_of(model, extra), loss_of(model, batch))


def test_bad_selection_mask_is_named():
    model = tiny_fourm()
    batch = random_batch(model.modalities, batch=2)
    batch["caption"]["is_input"] = batch["caption"]["is_input"].long()
    with pytest.raises(ValueError, match="modality 'caption': is_input must be a bool tensor"):
        model(batch)


@pytest.mark.parametrize("size,expected", [("base", 198.8e6)])
def test_trunk_parameter_count_matches_upstream(size, expected):
    with torch.device("meta"):
        model = build_fourm(size, ["caption", "tok_rgb@224", "rgb@224"])
    trunk = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("encoder_emb", "decoder_emb")))
    assert abs(trunk - expected) < 0.05e6


def test_named_sizes_and_variants_from_config():
    overrides = {"caption": {"vocab_size": 50, "max_tokens": 4}, "tok_rgb@32": {"vocab_size": 40, "patch_size": 8}}
    modalities = {"names": ["caption", "tok_rgb@32"], "overrides": overrides}
    with torch.device("meta"):
        model = build_fourm("small", modalities, variant="swiglu_qknorm_nobias")
        gelu = build_fourm("tiny", modalities, variant="gelu")
    block = model.encoder.blocks[0]
    assert block.attn.q_proj.in_features == 512 and len(model.decoder.blocks) == 8
    assert block.attn.q_norm is not None and block.attn.q_norm.bias is None and block.attn.q_proj.bias is None
    assert block.mlp.fc1.out_features == int(2 * 4 * 512 / 3)
    assert gelu.encoder.blocks[0].attn.q_proj.bias is not None and gelu.encoder.blocks[0].mlp_norm.bias is not None
    with pytest.raises(ValueError, match="unknown 4M size 'huge'"):
        build_fourm("huge", modalities)


def test_meta_device_build_initialises_like_a_normal_build():
    with torch.device("meta"):
        model = tiny_fourm()
    model.to_empty(device="cpu")
    model.initialize_weights()
    reference = tiny_fourm()
    torch.testing.assert_close(
        model.encoder_embeddings["caption"].pos_emb, reference.encoder_embeddings["caption"].pos_emb
    )
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.mask_token.std() > 0


def test_tiny_model_overfits_one_masked_batch():
    model = tiny_fourm(dim=64)
    batch = random_batch(tiny_registry(), batch=4, seed=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    objective = FourMLoss()
    first = None
    for _ in range(150):
        loss, _ = objective(model(dict(batch)))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 3.0 and loss.item() < 0.05 * first
