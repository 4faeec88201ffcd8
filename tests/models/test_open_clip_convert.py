"""open_clip CLIP weights in and out of our CLIP: a tiny random open_clip model built from a model config dict
(no download) gives the same image and text features as ours after conversion, both ways."""

import pytest
import torch

open_clip_model = pytest.importorskip("open_clip.model")

from polymodal.models.open_clip_weights import (  # noqa: E402
    build_from_open_clip_config,
    open_clip_to_polymodal,
    polymodal_to_open_clip,
)

VOCAB, CONTEXT = 64, 12


def config(quick_gelu: bool = True, text: dict | None = None) -> dict:
    return {
        "embed_dim": 16,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 24, "heads": 2, "layers": 2}
        | (text or {}),
    }


def open_clip_of(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = open_clip_model.CLIP(**cfg).eval()
    with torch.no_grad():  # norms and biases start at 1 and 0: perturb every tensor so a misplaced one shows
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


def inputs(eot_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 32, 32, generator=generator)
    ids = torch.randint(1, VOCAB - 1, (3, CONTEXT), generator=generator)
    for row, length in enumerate((4, 7, CONTEXT)):  # an end token then padding (0)
        ids[row, length - 1] = VOCAB - 1 if eot_id is None else eot_id
        ids[row, length:] = 0
    return images, ids


def our_features(model, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model.eval()({"image": images, "text_ids": ids})
    return out["image_embeds"], out["text_embeds"]


def their_features(model, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(ids, normalize=True)


@pytest.mark.parametrize(
    ("quick_gelu", "text", "eot_id"),
    [(True, None, None), (False, None, None), (True, {"pool_type": "eos", "eos_id": 5}, 5)],
    ids=["quick_gelu-argmax", "gelu-argmax", "quick_gelu-eos"],
)
def test_open_clip_weights_give_the_same_features(quick_gelu, text, eot_id):
    cfg = config(quick_gelu, text)
    theirs = open_clip_of(cfg)
    ours = build_from_open_clip_config(cfg)
    ours.load_state_dict(open_clip_to_polymodal(theirs.state_dict(), cfg), strict=True)
    images, ids = inputs(eot_id)
    for mine, reference in zip(our_features(ours, images, ids), their_features(theirs, images, ids), strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-5)
    assert ours.models["logit_scale"].log_scale.item() == pytest.approx(theirs.logit_scale.item())


def test_exported_weights_load_into_open_clip_and_round_trip_exactly():
    cfg = config()
    ours = build_from_open_clip_config(cfg)
    exported = polymodal_to_open_clip(ours.state_dict(), cfg)
    theirs = open_clip_model.CLIP(**cfg).eval()
    theirs.load_state_dict(exported, strict=True)
    images, ids = inputs()
    for mine, reference in zip(our_features(ours, images, ids), their_features(theirs, images, ids), strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-5)
    back = open_clip_to_polymodal(exported, cfg)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back[name], tensor), name


def test_bad_state_dicts_and_configs_are_refused():
    cfg = config()
    state = open_clip_of(cfg).state_dict()
    with pytest.raises(ValueError, match="visual.proj"):
        open_clip_to_polymodal({k: v for k, v in state.items() if k != "visual.proj"}, cfg)
    with pytest.raises(ValueError, match="shape"):
        open_clip_to_polymodal(state, config() | {"embed_dim": 8})
    with pytest.raises(ValueError, match="ls_init_value"):
        build_from_open_clip_config(config(text={"ls_init_value": 1e-4}))
    with pytest.raises(ValueError, match="pool_type"):
        build_from_open_clip_config(config(text={"pool_type": "last"}))
    resnet = config()
    resnet["vision_cfg"] = resnet["vision_cfg"] | {"layers": [1, 1, 1, 1], "width": 16}
    with pytest.raises(ValueError, match="ResNet tower"):
        build_from_open_clip_config(resnet)
