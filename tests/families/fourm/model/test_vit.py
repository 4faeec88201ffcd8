"""FourMViT: FourM's names (a FourM state dict loads with no missing key), FourM's encoder output on all-input rgb,
upstream checkpoints through upstream.py, and the mean-pool classification head."""

import pytest
import torch
import torch.nn.functional as F
from fourm_test_batches import MODALITY_OVERRIDES
from safetensors.torch import save_file
from test_upstream import layer_norm, linear, mlp, self_attention, upstream_config, upstream_state_dict

from polymodal.checkpoint.weights import export_weights
from polymodal.families.fourm.model import (
    VARIANTS,
    ClassificationHead,
    FourMViT,
    FourMViTClassifier,
    build_fourm,
    build_fourm_vit,
    from_fourm,
    load_fourm_weights,
)
from polymodal.families.fourm.samples import IMAGENET_MEAN, IMAGENET_STD
from polymodal.families.fourm.upstream import load_upstream_checkpoint

SMALL = dict(dim=32, encoder_depth=2, num_heads=4)
RGB, PATCH, RES = "rgb@32", 8, 32


def small_fourm(variant: str = "swiglu_nobias", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_fourm("tiny", {"names": list(MODALITY_OVERRIDES), "overrides": MODALITY_OVERRIDES}, variant,
                       decoder_depth=1, **(SMALL | overrides))  # fmt: skip


def small_vit(variant: str = "swiglu_nobias", **overrides) -> FourMViT:
    return build_fourm_vit("tiny", variant, image_size=RES, patch_size=PATCH, **(SMALL | overrides))


def all_input_encoding(fourm, pixels: torch.Tensor) -> torch.Tensor:
    """FourM's encoder output with every rgb patch given as input (register tokens dropped)."""
    every = torch.ones(pixels.shape[0], (RES // PATCH) ** 2, dtype=torch.bool)
    batch = {RGB: {"tensor": pixels, "is_input": every, "is_target": torch.zeros_like(every)}}
    encoded = fourm.encode(fourm.embed_inputs(batch))
    return encoded[:, fourm.register_tokens.shape[1] if fourm.register_tokens is not None else 0 :]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("registers", [0, 2])
def test_fourm_state_dict_loads_without_missing_keys_and_reproduces_its_encoder(variant, registers):
    fourm = small_fourm(variant, num_register_tokens=registers).eval()
    vit = small_vit(variant, num_register_tokens=registers).eval()
    fourm_state = fourm.state_dict()
    assert set(vit.state_dict()) <= set(fourm_state)
    result = vit.load_state_dict(fourm_state, strict=False)
    assert result.missing_keys == []
    assert all(key.startswith(("decoder", "context_proj", "mask_token", "encoder_embeddings.tok_rgb@32",
                               "encoder_embeddings.caption")) for key in result.unexpected_keys)  # fmt: skip
    pixels = torch.randn(3, 3, RES, RES)
    with torch.no_grad():
        tokens = vit(pixels)
        assert tokens.shape == (3, 16, 32)
        torch.testing.assert_close(tokens, all_input_encoding(fourm, pixels), atol=1e-5, rtol=1e-5)


def test_load_fourm_weights_ignores_the_decoder_reports_strays_and_names_missing_keys(tmp_path):
    fourm = small_fourm(num_register_tokens=1)
    vit = small_vit(num_register_tokens=1)
    assert load_fourm_weights(vit, fourm.state_dict()) == []
    for name, value in vit.state_dict().items():
        torch.testing.assert_close(value, fourm.state_dict()[name], rtol=0, atol=0)

    stray = dict(fourm.state_dict(), **{"encoder.extra.weight": torch.zeros(2)})
    assert load_fourm_weights(vit, stray) == ["encoder.extra.weight"]

    incomplete = {k: v for k, v in fourm.state_dict().items() if not k.startswith("encoder.blocks.1.mlp.")}
    with pytest.raises(ValueError, match=r"missing \['encoder\.blocks\.1\.mlp\.fc1\.weight'"):
        load_fourm_weights(vit, incomplete)
    with pytest.raises(ValueError, match="missing.*register_tokens"):
        load_fourm_weights(small_vit(num_register_tokens=1), small_fourm().state_dict())
    with pytest.raises(ValueError, match=r"missing \['encoder_embeddings\.rgb@64\.mod_emb'"):
        load_fourm_weights(build_fourm_vit("tiny", image_size=64, patch_size=8, **SMALL), fourm.state_dict())
    with pytest.raises(ValueError, match=r"shape mismatches \['encoder.*source \(64,\) vs ViT \(32,\)"):
        load_fourm_weights(small_vit(), small_fourm(dim=64, num_heads=4).state_dict())

    export_weights(fourm, tmp_path / "export", config_yaml="model: {}\n")  # tied/shared weights stored once
    from_disk = small_vit(num_register_tokens=1)
    assert load_fourm_weights(from_disk, tmp_path / "export") == []
    torch.testing.assert_close(from_disk(torch.ones(1, 3, RES, RES)), vit(torch.ones(1, 3, RES, RES)))


def test_from_fourm_copies_the_encoder_path():
    fourm = small_fourm("gelu", num_register_tokens=2).eval()
    vit = from_fourm(fourm).eval()
    pixels = torch.randn(2, 3, RES, RES)
    with torch.no_grad():
        torch.testing.assert_close(vit(pixels), all_input_encoding(fourm, pixels), atol=1e-5, rtol=1e-5)
        vit.encoder.final_norm.weight.add_(1.0)
    assert not torch.equal(vit.encoder.final_norm.weight, fourm.encoder.final_norm.weight)  # a copy, not a view
    with pytest.raises(ValueError, match="'tok_rgb@32' is not a pixel input"):
        from_fourm(fourm, modality="tok_rgb@32")


def upstream_vit_reference(sd: dict, config: dict, pixels: torch.Tensor) -> torch.Tensor:
    """apple/ml-4m's FourMViT forward written on the upstream-named tensors: patches (ph, pw, c) -> proj + pos + mod,
    unmasked pre-norm blocks, encoder_norm."""
    batch, side = pixels.shape[0], RES // PATCH
    patches = pixels.reshape(batch, 3, side, PATCH, side, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(batch, side**2, -1)
    prefix = f"encoder_embeddings.{RGB}"
    x = linear(sd, f"{prefix}.proj", patches) + sd[f"{prefix}.pos_emb"] + sd[f"{prefix}.mod_emb"]
    nothing_blocked = torch.zeros(batch, side**2, side**2, dtype=torch.bool)
    for index in range(config["encoder_depth"]):
        block = f"encoder.{index}"
        x = x + self_attention(sd, f"{block}.attn", config, layer_norm(sd, f"{block}.norm1", x), nothing_blocked)
        x = x + mlp(sd, f"{block}.mlp", config, layer_norm(sd, f"{block}.norm2", x))
    return layer_norm(sd, "encoder_norm", x)


@pytest.mark.parametrize("variant", ["gelu", "swiglu_qknorm_nobias"])
def test_upstream_checkpoint_into_fourm_vit_matches_upstream_vit_forward(tmp_path, variant):
    config = upstream_config(variant)
    state = upstream_state_dict(config, seed=1)
    save_file(state, str(tmp_path / "fm.safetensors"), metadata={key: str(value) for key, value in config.items()})
    fourm = load_upstream_checkpoint(tmp_path / "fm.safetensors", MODALITY_OVERRIDES)
    vit = small_vit(variant, dim=config["dim"], encoder_depth=config["encoder_depth"], num_heads=config["num_heads"])
    assert load_fourm_weights(vit, fourm.state_dict()) == []
    pixels = torch.randn(2, 3, RES, RES)
    with torch.no_grad():
        torch.testing.assert_close(vit(pixels), upstream_vit_reference(state, config, pixels), atol=1e-5, rtol=1e-5)


def test_classifier_normalises_pixels_then_mean_pools_norms_and_projects():
    torch.manual_seed(0)
    vit = small_vit(num_register_tokens=1).eval()
    classifier = FourMViTClassifier(vit, num_classes=5).eval()
    with torch.no_grad():
        classifier.head.norm.weight.normal_()
        classifier.head.norm.bias.normal_()
    pixels = torch.rand(4, 3, RES, RES)
    out = classifier({"rgb": pixels, "label": torch.zeros(4, dtype=torch.long)})
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        tokens = vit((pixels - mean) / std)
        pooled = F.layer_norm(tokens.mean(1), (32,), classifier.head.norm.weight, classifier.head.norm.bias, eps=1e-6)
        expected = pooled @ classifier.head.proj.weight.T + classifier.head.proj.bias
    assert out["logits"].shape == (4, 5)
    torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"\['decoder_depth'\] are not arguments"):
        build_fourm_vit("tiny", image_size=RES, patch_size=PATCH, decoder_depth=2)
    with pytest.raises(ValueError, match="resolution 30 is not a multiple of patch 8"):
        build_fourm_vit("tiny", image_size=30, patch_size=PATCH, **SMALL)
    with pytest.raises(ValueError, match="needs a pixel"):
        FourMViT(small_fourm().encoder_embeddings["tok_rgb@32"], small_fourm().encoder)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        ClassificationHead(32, 1)
    with pytest.raises(ValueError, match=r"pixels must be \[B, 3, 32, 32\]"):
        small_vit()(torch.zeros(1, 3, 64, 64))


def test_meta_build_materialises_and_initialises_like_fourm():
    with torch.device("meta"):
        vit = small_vit(num_register_tokens=2)
    assert all(p.is_meta for p in vit.parameters())
    vit.to_empty(device="cpu")
    vit.initialize_weights()
    embedding = vit.encoder_embeddings[RGB]
    torch.testing.assert_close(embedding.pos_emb, small_vit().encoder_embeddings[RGB].pos_emb)  # sin-cos recomputed
    assert torch.isfinite(vit(torch.zeros(1, 3, RES, RES))).all()
    assert 0.01 < vit.register_tokens.std() < 0.03 and 0.01 < embedding.mod_emb.std() < 0.03
    torch.testing.assert_close(vit.encoder.final_norm.weight, torch.ones(32))
