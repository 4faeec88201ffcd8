"""Our CLIP reproduces Hugging Face's ``CLIPModel`` (tiny, randomly initialised, never downloaded) after the weight
conversion, with either activation and either end-of-text rule; the conversion round-trips."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from polymodal.models.hf_clip import build_from_clip_config, clip_to_polymodal, polymodal_to_clip  # noqa: E402

VOCAB, CONTEXT, EOT = 64, 12, 63


def tiny_clip_config(hidden_act: str, eos_token_id: int):
    text = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CONTEXT, hidden_act=hidden_act, eos_token_id=eos_token_id, layer_norm_eps=1e-5,
    )  # fmt: skip
    vision = dict(
        hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=2, image_size=16, patch_size=4,
        hidden_act=hidden_act, layer_norm_eps=1e-5,
    )  # fmt: skip
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def text_batch(generator: torch.Generator) -> torch.Tensor:
    """Rows of random tokens below EOT, then EOT, then padding 0 (the OpenAI tokenizer's layout)."""
    ids = torch.zeros(3, CONTEXT, dtype=torch.long)
    for row, length in enumerate((4, CONTEXT - 1, 7)):
        ids[row, :length] = torch.randint(1, EOT, (length,), generator=generator)
        ids[row, length] = EOT
    return ids


def assert_same_outputs(ours, reference) -> None:
    generator = torch.Generator().manual_seed(1)
    images, ids = torch.randn(3, 3, 16, 16, generator=generator), text_batch(generator)
    with torch.no_grad():
        expected = reference.eval()(input_ids=ids, pixel_values=images)
        got = ours.eval()({"image": images, "text_ids": ids})
    logits_per_image = got["logit_scale"] * got["image_embeds"] @ got["text_embeds"].T
    torch.testing.assert_close(got["image_embeds"], expected.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["text_embeds"], expected.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_per_image, expected.logits_per_image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("eos_token_id", [2, EOT], ids=["argmax-rule", "eot-id-rule"])
def test_converted_weights_reproduce_hugging_face(hidden_act, eos_token_id):
    torch.manual_seed(0)
    config = tiny_clip_config(hidden_act, eos_token_id)
    reference = transformers.CLIPModel(config)
    with torch.no_grad():
        reference.logit_scale.fill_(3.1)  # not the initial value, to see it carried over
    ours = build_from_clip_config(config)
    ours.load_state_dict(clip_to_polymodal(reference.state_dict(), config))
    assert_same_outputs(ours, reference)


def test_exported_weights_load_strictly_into_hugging_face_and_reproduce_ours():
    torch.manual_seed(0)
    config = tiny_clip_config("gelu", EOT)
    ours, reference = build_from_clip_config(config), transformers.CLIPModel(config)
    reference.load_state_dict(polymodal_to_clip(ours.state_dict(), config), strict=True)
    assert_same_outputs(ours, reference)


def test_conversion_round_trips_and_rejects_a_wrong_state_dict():
    config = tiny_clip_config("quick_gelu", 2)
    reference = transformers.CLIPModel(config)
    theirs = reference.state_dict()
    back = polymodal_to_clip(clip_to_polymodal(theirs, config), config)
    assert back.keys() == theirs.keys() and all(torch.equal(back[name], theirs[name]) for name in theirs)
    assert clip_to_polymodal(theirs, config)["models.logit_scale.log_scale"].shape == (1,)
    with pytest.raises(ValueError, match="missing"):
        clip_to_polymodal({k: v for k, v in theirs.items() if k != "visual_projection.weight"}, config)
    wrong = dict(theirs) | {"text_projection.weight": torch.zeros(8, 32)}
    with pytest.raises(ValueError, match="shapes"):
        clip_to_polymodal(wrong, config)
    with pytest.raises(ValueError, match="hidden_act"):
        build_from_clip_config(tiny_clip_config("relu", 2))
