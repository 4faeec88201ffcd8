"""The ResNet image tower against open_clip's ModifiedResNet: the same weights give the same embeddings (fp32, 1e-5),
in training mode (batch statistics) and in evaluation mode (running statistics)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from polymodal.models.clip import build_clip, tower_train_flops
from polymodal.models.resnet import (
    ModifiedResNet,
    build_clip_resnet_tower,
    conv_macs,
    open_clip_resnet_key,
    resnet_tower_train_flops,
)
from polymodal.objectives.contrastive import CLIPContrastiveLoss
from polymodal.train.flop_count import _missing_formulas

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


def resnet_clip():
    vision = dict(
        image_size=SIZE, layers=LAYERS, width=WIDTH, num_heads=HEADS, pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3
    )
    text = dict(vocab_size=50, context_length=12, dim=32, depth=1, num_heads=2)
    return build_clip(EMBED, vision=vision, text=text, vision_tower="resnet")


def test_train_flops_of_a_resnet_clip_match_the_flop_counter():
    torch.manual_seed(0)
    model = resnet_clip()
    batch = {"image": torch.rand(3, 3, SIZE, SIZE), "text_ids": torch.randint(0, 50, (3, 12))}
    image_flops = resnet_tower_train_flops(model.models["image_tower"], 3, SIZE)
    with FlopCounterMode(display=False, custom_mapping=_missing_formulas()) as counter:
        model(batch, only="image_tower")["image_embeds"].sum().backward()
    # the analytic count (the convention of the ViT tower's patch projection) includes the first convolution's
    # input gradient, which a real step never computes: the images need none
    stem = model.models["image_tower"].trunk.module.conv1
    unneeded = 2 * conv_macs(stem, SIZE)[0] * 3
    assert image_flops - unneeded == pytest.approx(counter.get_total_flops(), rel=1e-6)
    assert model.train_flops(batch) == image_flops + tower_train_flops(model.models["text_tower"], 3, 12, 12)


def test_a_resnet_clip_starts_as_openai_clip_and_trains():
    torch.manual_seed(0)
    model = resnet_clip()
    trunk = model.models["image_tower"].trunk.module
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in trunk.layer1)
    pool = model.models["image_tower"].postprocessor.module
    assert pool.q_proj.weight.std().item() == pytest.approx(pool.q_proj.in_features**-0.5, rel=0.1)
    batch = {"image": torch.rand(8, 3, SIZE, SIZE), "text_ids": torch.randint(1, 50, (8, 12))}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = CLIPContrastiveLoss()(model(batch))[0]
        optimizer.zero_grad(), loss.backward(), optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="unknown vision_tower"):
        build_clip(EMBED, vision={}, text={}, vision_tower="convnext")
