"""Our AIMv2 encoder reproduces Hugging Face's ``Aimv2VisionModel`` (tiny, randomly initialised, never downloaded)
after the weight conversion, features and pooled output; exported weights load strictly into it; bad input is
named."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from polymodal.models.hf_aimv2 import aimv2_to_polymodal, build_from_aimv2_config, polymodal_to_aimv2  # noqa: E402


def tiny_aimv2_config(**overrides):
    options = dict(
        hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4,
        rms_norm_eps=1e-5,
    )  # fmt: skip
    return transformers.Aimv2VisionConfig(**(options | overrides))


def reference_model(config):
    torch.manual_seed(0)
    model = transformers.Aimv2VisionModel(config)
    with torch.no_grad():  # norms start at 1 and the pooling query near 0: make every tensor matter
        for name, tensor in model.named_parameters():
            if "norm" in name or "cls_token" in name:
                tensor.normal_(mean=1.0 if "norm" in name else 0.0, std=0.5)
    return model.eval()


def assert_same_outputs(ours, reference, use_head: bool) -> None:
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours.eval()({"image": images})
        expected = reference(pixel_values=images)
    torch.testing.assert_close(got["features"], expected.last_hidden_state, atol=1e-5, rtol=0)
    if use_head:
        torch.testing.assert_close(got["pooled"], expected.pooler_output, atol=1e-5, rtol=0)
    else:
        assert "pooled" not in got and expected.pooler_output is None


@pytest.mark.parametrize("use_head", [True, False])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_converted_weights_reproduce_hugging_face(use_head, qkv_bias):
    config = tiny_aimv2_config(use_head=use_head, qkv_bias=qkv_bias)
    reference = reference_model(config)
    ours = build_from_aimv2_config(config)
    ours.load_state_dict(aimv2_to_polymodal(reference.state_dict(), config), strict=True)
    assert_same_outputs(ours, reference, use_head)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_exported_weights_load_strictly_into_hugging_face_and_reproduce_ours(qkv_bias):
    config = tiny_aimv2_config(qkv_bias=qkv_bias)
    torch.manual_seed(0)
    ours = build_from_aimv2_config(config)
    reference = reference_model(config)
    reference.load_state_dict(polymodal_to_aimv2(ours.state_dict(), config), strict=True)
    assert_same_outputs(ours, reference, use_head=True)


def test_hugging_face_weights_round_trip_exactly():
    config = tiny_aimv2_config(qkv_bias=True)
    theirs = reference_model(config).state_dict()
    back = polymodal_to_aimv2(aimv2_to_polymodal(theirs, config), config)
    assert back.keys() == theirs.keys() and all(torch.equal(back[name], theirs[name]) for name in theirs)


def test_bad_input_is_named():
    config = tiny_aimv2_config()
    theirs = reference_model(config).state_dict()
    with pytest.raises(ValueError, match="missing"):
        aimv2_to_polymodal({k: v for k, v in theirs.items() if k != "rms_norm.weight"}, config)
    with pytest.raises(ValueError, match="unexpected"):
        aimv2_to_polymodal(theirs, tiny_aimv2_config(use_head=False))
    with pytest.raises(ValueError, match="shapes"):
        aimv2_to_polymodal(dict(theirs) | {"head.output_proj.bias": torch.zeros(3)}, config)
    for option, value in (("hidden_act", "gelu"), ("mlp_bias", True), ("is_native", True)):
        with pytest.raises(ValueError, match=option):
            build_from_aimv2_config(tiny_aimv2_config(**{option: value}))
