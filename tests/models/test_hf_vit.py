"""Our ViT reproduces Hugging Face's ``ViTForImageClassification`` and ``ViTModel`` (tiny, randomly initialised, never
downloaded) after the weight conversion; exported weights load strictly into them; bad input is named."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from polymodal.models.hf_vit import build_from_vit_config, polymodal_to_vit, vit_to_polymodal  # noqa: E402

NUM_LABELS = 5


def tiny_vit_config(**overrides):
    options = dict(
        hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4,
        num_labels=NUM_LABELS, pooler_output_size=12,
    )  # fmt: skip
    return transformers.ViTConfig(**(options | overrides))


def reference_model(config, head):
    torch.manual_seed(0)
    if head == "classifier":
        model = transformers.ViTForImageClassification(config)
    else:
        model = transformers.ViTModel(config, add_pooling_layer=head == "pooler")
    with torch.no_grad():  # HF starts the CLS token and positions at zero-ish values: make them matter
        for name, tensor in model.named_parameters():
            if "embeddings" in name and "patch" not in name:
                tensor.normal_(std=0.5)
    return model.eval()


def assert_same_outputs(ours, reference, head) -> None:
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours.eval()({"image": images})
        if head == "classifier":
            expected = reference(pixel_values=images)
            torch.testing.assert_close(got["logits"], expected.logits, atol=1e-5, rtol=0)
            return
        expected = reference(pixel_values=images)
    torch.testing.assert_close(got["features"], expected.last_hidden_state, atol=1e-5, rtol=0)
    if head == "pooler":
        torch.testing.assert_close(got["pooled"], expected.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["classifier", "pooler", None])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_converted_weights_reproduce_hugging_face(head, qkv_bias):
    config = tiny_vit_config(qkv_bias=qkv_bias)
    reference = reference_model(config, head)
    ours = build_from_vit_config(config, head)
    ours.load_state_dict(vit_to_polymodal(reference.state_dict(), config, head), strict=True)
    assert_same_outputs(ours, reference, head)


def test_features_before_the_classifier_match_too():
    config = tiny_vit_config()
    reference = reference_model(config, "classifier")
    ours = build_from_vit_config(config, "classifier")
    ours.load_state_dict(vit_to_polymodal(reference.state_dict(), config, "classifier"))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference.vit(pixel_values=images).last_hidden_state
        torch.testing.assert_close(ours.eval()({"image": images})["features"], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["classifier", None])
def test_exported_weights_load_strictly_into_hugging_face_and_reproduce_ours(head):
    config = tiny_vit_config()
    torch.manual_seed(0)
    ours = build_from_vit_config(config, head)
    reference = reference_model(config, head)
    reference.load_state_dict(polymodal_to_vit(ours.state_dict(), config, head), strict=True)
    assert_same_outputs(ours, reference, head)
    back = vit_to_polymodal(polymodal_to_vit(ours.state_dict(), config, head), config, head)
    assert all(torch.equal(back[name], tensor) for name, tensor in ours.state_dict().items())


def test_bad_input_is_named():
    config = tiny_vit_config()
    theirs = reference_model(config, "classifier").state_dict()
    with pytest.raises(ValueError, match="missing"):
        vit_to_polymodal({k: v for k, v in theirs.items() if k != "classifier.bias"}, config)
    with pytest.raises(ValueError, match="unexpected"):
        vit_to_polymodal(theirs, config, head=None)  # a classifier's weights are not a ViTModel's
    with pytest.raises(ValueError, match="shapes"):
        vit_to_polymodal(dict(theirs) | {"classifier.weight": torch.zeros(3, 24)}, config)
    with pytest.raises(ValueError, match="hidden_act"):
        build_from_vit_config(tiny_vit_config(hidden_act="relu"))
    with pytest.raises(ValueError, match="hidden_dropout_prob"):
        build_from_vit_config(tiny_vit_config(hidden_dropout_prob=0.1))
    with pytest.raises(ValueError, match="head"):
        build_from_vit_config(config, head="mlp")
