"""configs/aimv2: AIMv2-L's encoder size on the meta device (term by term, and Hugging Face's Aimv2VisionModel); the
tiny recipe's wiring: no leakage into the pixel or caption predictions, the loss 0.4 x pixel + 1.0 x caption
cross-entropy computed plainly, bidirectional encoder features for the probes, the encoder itself Hugging Face's
AIMv2; and a few training steps with the probes through the Trainer on toy scenes."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from trainer_configs import tiny_scene_recipe_overrides

from polymodal.config import instantiate, load_config
from polymodal.models.hf_aimv2 import aimv2_to_polymodal
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "aimv2"
# A small model from the tiny recipe: 32-pixel images in 8-pixel patches (16 of them), captions of 12 tokens.
SMALL = [
    "constants.image_size=32", "constants.vocab_size=50", "constants.context_length=12", "constants.vision_depth=2",
]  # fmt: skip
IMAGE, PATCH, TOKENS, VOCAB, PAD = 32, 8, 12, 50, 0
NUM_PATCHES = (IMAGE // PATCH) ** 2


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def aimv2_l_encoder_count() -> int:
    """AIMv2-L's encoder from its config (l3m's configs/aimv2/001_aimv2_hfdata.yaml: dim 1024, 24 blocks, SwiGLU
    hidden 2816, RMSNorm, bias-free attention and MLP, patch 14 at 224 px, learned positions, no CLS, final norm)."""
    dim, depth, hidden, patch_pixels, num_patches = 1024, 24, 2816, 14 * 14 * 3, 256
    patch_embed = patch_pixels * dim + dim + dim  # the projection with its bias, the RMSNorm after it
    block = 4 * dim * dim + 3 * dim * hidden + 2 * dim  # q, k, v, o; gate, up, down; two RMSNorms
    return patch_embed + num_patches * dim + depth * block + dim  # ... positions, blocks, final RMSNorm


def test_large_builds_on_meta_with_aimv2_l_encoder_count():
    cfg = load_config(CONFIGS / "large.yaml")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert all(parameter.is_meta for parameter in model.parameters())
    encoder, decoder = model.models["image_encoder"], model.models["text_decoder"]
    # 309,197,824: AIMv2-L's "0.3B" (Fini et al. 2024, Table 1); the header of large.yaml states it
    assert count(encoder) == aimv2_l_encoder_count() == 309_197_824
    dim, hidden, vocab, positions = 1024, 2816, 32000, 77 + 1
    decoder_block = 4 * dim * dim + 3 * dim * hidden + 2 * dim
    projections = dim * dim + dim + vocab * dim + positions * dim + dim  # image projection, embeddings, CLS
    heads = dim * 14 * 14 * 3 + dim * vocab  # pixels, vocabulary (bias-free)
    assert count(decoder) == projections + 12 * decoder_block + dim + heads == 221_434_880
    assert cfg.data.batch_transform.num_patches == 256 == (224 // 14) ** 2


def test_large_encoder_has_hugging_face_aimv2_large_size():
    transformers = pytest.importorskip("transformers")
    config = transformers.Aimv2VisionConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8, image_size=224,
        patch_size=14, use_head=False,
    )  # fmt: skip
    with torch.device("meta"):
        reference = transformers.Aimv2VisionModel(config)
    assert count(reference) == aimv2_l_encoder_count()


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "tiny.yaml", SMALL)
    return cfg, instantiate(cfg.model).double().eval(), instantiate(cfg.loss)


def batch(prefix_lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (len(prefix_lengths), TOKENS), generator=generator)
    ids[0, 8:] = PAD  # a short caption: padding after it
    images = torch.rand(len(prefix_lengths), 3, IMAGE, IMAGE, generator=generator, dtype=torch.float64)
    return {"rgb": images, "caption_ids": ids, "prefix_lengths": torch.tensor(prefix_lengths)}


def predictions(model, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's outputs with the caption logits written out (the vocabulary head's loss sums turned off)."""
    head = model.models["text_decoder"].head.blocks[1]
    chunk, head.loss_chunk_size = head.loss_chunk_size, None
    try:
        with torch.no_grad():
            return model(dict(data))
    finally:
        head.loss_chunk_size = chunk


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() > 1e-6)


def test_caption_predictions_see_no_later_token(small_model):
    _, model, _ = small_model
    data = batch([3, 9])
    reference = predictions(model, data)["caption_logits"]
    assert reference.shape == (2, TOKENS, VOCAB)  # the CLS and tokens 0 .. T-2 predict tokens 0 .. T-1
    for j in range(TOKENS - 1):
        changed = dict(data, caption_ids=data["caption_ids"].clone())
        changed["caption_ids"][:, j + 1 :] = (changed["caption_ids"][:, j + 1 :] + 7) % (VOCAB - 4) + 4
        logits = predictions(model, changed)["caption_logits"]
        # position 0 is the CLS, position p the token p - 1: positions <= j + 1 have seen tokens <= j only
        torch.testing.assert_close(logits[:, : j + 2], reference[:, : j + 2], atol=1e-10, rtol=0)
        if j + 2 < TOKENS:
            assert differs(logits[:, j + 2], reference[:, j + 2])  # the test can see a change
    different_image = predictions(model, dict(data, rgb=data["rgb"].flip(-1)))["caption_logits"]
    assert differs(different_image[:, 0], reference[:, 0])  # every text position sees the image


def test_pixel_predictions_see_no_later_patch_outside_the_prefix(small_model):
    _, model, _ = small_model
    prefix = 5
    data = batch([prefix, prefix])
    reference = predictions(model, data)["pixel_pred"]
    grid = IMAGE // PATCH
    for i in range(prefix - 1, NUM_PATCHES - 1):  # the prediction at i is for target i + 1 >= prefix: counted
        images = data["rgb"].clone()
        for later in range(i + 1, NUM_PATCHES):
            row, col = divmod(later, grid)
            images[:, :, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] += 1.0
        pred = predictions(model, dict(data, rgb=images))["pixel_pred"]
        torch.testing.assert_close(pred[:, prefix - 1 : i + 1], reference[:, prefix - 1 : i + 1], atol=1e-10, rtol=0)
        assert differs(pred[:, i + 1], reference[:, i + 1])
    # inside the prefix the outputs see the whole prefix: why those targets are not counted
    images = data["rgb"].clone()
    images[:, :, :PATCH, PATCH : 2 * PATCH] += 1.0  # patch 1
    assert differs(predictions(model, dict(data, rgb=images))["pixel_pred"][:, 0], reference[:, 0])


def plain_patches(images: torch.Tensor) -> torch.Tensor:
    """Row-major patches, each flattened as (row, column, channel) and standardised (unbiased variance)."""
    b, c, grid = images.shape[0], images.shape[1], IMAGE // PATCH
    patches = images.reshape(b, c, grid, PATCH, grid, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(b, grid * grid, -1)
    return (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()


def test_loss_is_0_4_pixel_plus_caption_cross_entropy(small_model):
    _, model, loss = small_model
    prefix_lengths = [1, 6, 15]
    data = batch(prefix_lengths, seed=1)
    loss_value, metrics = loss(model(dict(data)))  # the vocabulary head's chunked loss sums
    outputs = predictions(model, data)
    targets = plain_patches(data["rgb"])
    errors = []
    for b, prefix in enumerate(prefix_lengths):
        for target in range(max(prefix, 1), NUM_PATCHES):
            errors.append((outputs["pixel_pred"][b, target - 1] - targets[b, target]).square().mean())
    pixel = torch.stack(errors).mean()
    logits, ids = outputs["caption_logits"], data["caption_ids"]
    labelled = ids != PAD
    caption = F.cross_entropy(logits[labelled], ids[labelled])
    torch.testing.assert_close(metrics["pixel"].double(), pixel, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(metrics["caption"].double(), caption, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(loss_value.double(), 0.4 * pixel + 1.0 * caption, rtol=1e-6, atol=1e-8)


def test_probes_read_the_encoders_bidirectional_features(small_model):
    cfg, model, _ = small_model
    assert set(cfg.evaluators) == {"colour_probe", "shape_probe", "count_probe"}
    for probe in cfg.evaluators.values():
        assert probe.part == "image_encoder" and probe.feature_key == "image_features" and probe.pool == "mean"
        assert probe.batch_transform.length == NUM_PATCHES
    transform = instantiate(cfg.evaluators.colour_probe.batch_transform)
    data = transform({"rgb": batch([1, 1])["rgb"], "sample_id": torch.arange(2)}, torch.Generator())
    with torch.no_grad():
        features = model(dict(data), only="image_encoder")
    assert "decoder_tokens" not in features and features["image_features"].shape == (2, NUM_PATCHES, 128)
    last = dict(data, rgb=data["rgb"].clone())
    last["rgb"][:, :, -PATCH:, -PATCH:] += 1.0
    with torch.no_grad():
        changed = model(last, only="image_encoder")["image_features"]
    assert differs(changed[:, 0], features["image_features"][:, 0])  # the first patch sees the last one


def test_encoder_is_hugging_face_aimv2(small_model):
    transformers = pytest.importorskip("transformers")
    cfg, model, _ = small_model
    config = transformers.Aimv2VisionConfig(
        hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE,
        patch_size=PATCH, use_head=False, rms_norm_eps=1e-5,
    )  # fmt: skip
    reference = transformers.Aimv2VisionModel(config).eval()  # float32: its RMSNorm computes in float32
    ours = {name.replace("preprocessor.", "preprocessor.blocks.0.", 1): tensor for name, tensor in
            aimv2_to_polymodal(reference.state_dict(), config).items()}  # fmt: skip
    encoder = instantiate(cfg.model).models["image_encoder"].eval()
    encoder.load_state_dict(ours, strict=True)
    images = batch([NUM_PATCHES, NUM_PATCHES])
    with torch.no_grad():
        got = encoder({"rgb": images["rgb"].float(), "prefix_lengths": images["prefix_lengths"]})["image_features"]
        expected = reference(pixel_values=images["rgb"].float()).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.usefixtures("single_thread")
def test_tiny_recipe_trains_and_probes(tmp_path):
    overrides = [*tiny_scene_recipe_overrides(tmp_path), "constants.probe_sweep.epochs=2"]
    Trainer(load_config(CONFIGS / "tiny.yaml", overrides)).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert len(train) == 3
    for row in train:
        assert torch.isfinite(torch.tensor(row["loss"]))
        assert row["loss"] == pytest.approx(0.4 * row["pixel"] + row["caption"], rel=1e-5)
    (evaluated,) = [row for row in rows if row["split"] == "eval"]
    for name in ("colour_probe", "shape_probe", "count_probe"):
        assert 0.0 <= evaluated[f"{name}/accuracy"] <= 1.0
