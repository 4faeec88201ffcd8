"""The ResNet image tower against open_clip's ModifiedResNet: the same weights give the same embeddings (fp32, 1e-5),
in training mode (batch statistics) and in evaluation mode (running statistics)."""

import pytest
import torch
import torch.nn.functional as F

from polymodal.models.resnet import ModifiedResNet, build_clip_resnet_tower, open_clip_resnet_key

open_clip_resnet = pytest.importorskip("open_clip.modified_resnet")

LAYERS, WIDTH, HEADS, EMBED, SIZE = (1, 2, 1, 1), 16, 4, 24, 64


def reference():
    torch.manual_seed(0)
    model = open_clip_resnet.ModifiedResNet(list(LAYERS), EMBED, HEADS, image_size=SIZE, width=WIDTH)
    for module in model.modules():  # nonzero norms and running statistics, so that every tensor matters
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.weight, 1.0, 0.2)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def ours_loaded(model):
    tower = build_clip_resnet_tower(SIZE, LAYERS, WIDTH, HEADS, EMBED)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("attnpool."):
            state[f"postprocessor.module.{key.removeprefix('attnpool.')}"] = value
        else:
            state[f"trunk.module.{open_clip_resnet_key(key)}"] = value
    tower.load_state_dict(state, strict=True)
    return tower


@pytest.mark.parametrize("train", [True, False])
def test_the_same_weights_give_open_clips_embeddings(train):
    model = reference()
    tower = ours_loaded(model)
    model.train(train), tower.train(train)
    images = torch.randn(3, 3, SIZE, SIZE)
    want = model(images)
    out = tower({"image": images})
    torch.testing.assert_close(out["image_pooled"], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["image_embeds"], F.normalize(want, dim=-1), atol=1e-5, rtol=1e-5)


def test_its_parameters_are_open_clips_one_for_one():
    model, tower = reference(), build_clip_resnet_tower(SIZE, LAYERS, WIDTH, HEADS, EMBED)
    assert sum(p.numel() for p in tower.parameters()) == sum(p.numel() for p in model.parameters())


def test_a_fresh_trunk_starts_every_block_as_its_shortcut():
    trunk = ModifiedResNet(LAYERS, WIDTH)
    trunk.reset_parameters()
    for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in stage)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        build_clip_resnet_tower(48, LAYERS, WIDTH, HEADS, EMBED)
    with pytest.raises(ValueError, match="four stage depths"):
        build_clip_resnet_tower(SIZE, (1, 1, 1), WIDTH, HEADS, EMBED)
    tower = build_clip_resnet_tower(SIZE, LAYERS, WIDTH, HEADS, EMBED)
    with pytest.raises(ValueError, match="built for 4 positions"):
        tower({"image": torch.randn(1, 3, 2 * SIZE, 2 * SIZE)})
