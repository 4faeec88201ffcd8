"""Image VQ tokenizers: shapes and units per modality, normalisation round trips, the reconstruction objective
against naive computations, a loss that falls under optimisation, and the tiny recipe trained, exported, reloaded."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from trainer_configs import REPO, experiment_block

from polymodal.checkpoint.weights import export_weights, load_pretrained
from polymodal.config import instantiate, load_config
from polymodal.data.synth.writers import write_shards
from polymodal.models.meta import BlockList, checking_keys
from polymodal.objectives.reconstruction import ReconstructionLoss, codebook_usage, mean_iou, psnr
from polymodal.tokenizers.image.quantizers import FSQ, VectorQuantizer
from polymodal.tokenizers.image.tokenizer import (
    DepthNormalization,
    NormalMapNormalization,
    RGBNormalization,
    SemsegNormalization,
    build_image_tokenizer,
    fit_log_depth_statistics,
)
from polymodal.train.trainer import Trainer, TrainingStopped

NUM_CLASSES = 5
SIZE = 16


def sample_images(modality: str, batch: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if modality == "rgb":
        return torch.rand(batch, 3, size, size, generator=generator)
    if modality == "depth":
        return 0.5 + 19.5 * torch.rand(batch, 1, size, size, generator=generator)
    if modality == "normal":
        return F.normalize(torch.randn(batch, 3, size, size, generator=generator), dim=1)
    return torch.randint(0, NUM_CLASSES, (batch, size, size), generator=generator)


def tiny_tokenizer(modality: str, quantizer: str = "vq", seed: int = 0):
    torch.manual_seed(seed)
    quantizer_module = VectorQuantizer(dim=8, codebook_size=32) if quantizer == "vq" else FSQ([4, 3, 3])
    return build_image_tokenizer(
        modality,
        quantizer_module,
        downsample=4,
        channels=[8, 16, 16],
        num_classes=NUM_CLASSES,
        depth_log_mean=1.9,
        depth_log_std=0.6,
    )


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
@pytest.mark.parametrize("modality", ["rgb", "depth", "normal", "semseg"])
def test_encode_decode_shapes_dtypes_and_units(modality, quantizer):
    tokenizer = tiny_tokenizer(modality, quantizer).eval()
    images = sample_images(modality, batch=3)
    codes = tokenizer.encode(images)
    assert codes.shape == (3, SIZE // 4, SIZE // 4) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < tokenizer.codebook_size
    assert tokenizer.tokens_per_image(SIZE) == codes[0].numel() == tokenizer.tokens_per_image((SIZE, SIZE))

    decoded = tokenizer.decode(codes)
    if modality == "semseg":
        assert decoded.shape == (3, SIZE, SIZE) and decoded.dtype == torch.int64
        assert 0 <= decoded.min() and decoded.max() < NUM_CLASSES
    else:
        assert decoded.shape == images.shape and decoded.dtype == torch.float32
    if modality == "rgb":
        assert 0 <= decoded.min() and decoded.max() <= 1
    if modality == "depth":
        assert decoded.min() > 0
    if modality == "normal":
        torch.testing.assert_close(decoded.norm(dim=1), torch.ones(3, SIZE, SIZE))


@pytest.mark.parametrize("modality", ["rgb", "depth", "normal", "semseg"])
def test_forward_writes_every_declared_key_and_matches_encode(modality):
    tokenizer = tiny_tokenizer(modality)
    images = sample_images(modality)
    with checking_keys():  # the guard raises on any undeclared read or write
        data = BlockList([tokenizer])({modality: images})
    assert set(tokenizer.write_keys) == {f"{modality}_{k}" for k in ("codes", "recon", "vq_loss", "vq_usage")}
    channels = NUM_CLASSES if modality == "semseg" else images.shape[1]
    assert data[f"{modality}_recon"].shape == (2, channels, SIZE, SIZE)
    assert data[f"{modality}_recon"].requires_grad
    assert data[f"{modality}_vq_loss"].ndim == 0
    assert data[f"{modality}_vq_usage"].sum().item() == data[f"{modality}_codes"].numel()
    tokenizer.eval()
    torch.testing.assert_close(tokenizer.encode(images), tokenizer({modality: images})[f"{modality}_codes"])


@pytest.mark.parametrize(
    "normalization, modality",
    [(RGBNormalization(), "rgb"), (DepthNormalization(1.9, 0.6), "depth"), (NormalMapNormalization(), "normal")],
)
def test_normalisation_round_trip_is_exact(normalization, modality):
    images = sample_images(modality, batch=4)
    torch.testing.assert_close(normalization.denormalize(normalization.normalize(images)), images)


def test_normalised_values_match_their_definitions():
    rgb = sample_images("rgb")
    torch.testing.assert_close(RGBNormalization().normalize(rgb), rgb * 2 - 1)
    depth = sample_images("depth")
    torch.testing.assert_close(DepthNormalization(1.9, 0.6).normalize(depth), (depth.log() - 1.9) / 0.6)
    zeros = DepthNormalization(0.0, 1.0, min_depth=1e-3).normalize(torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(zeros, torch.full((1, 1, 2, 2), math.log(1e-3)))  # absent samples stay finite


def test_semseg_finishes_logits_as_class_ids():
    ids = sample_images("semseg", batch=3)
    one_hot_logits = F.one_hot(ids, NUM_CLASSES).permute(0, 3, 1, 2).float()
    normalization = SemsegNormalization(NUM_CLASSES, embed_dim=4)
    assert torch.equal(normalization.finish(normalization.denormalize(one_hot_logits)), ids)
    embedded = normalization.normalize(ids)
    torch.testing.assert_close(embedded[1, :, 2, 3], normalization.class_embedding.weight[ids[1, 2, 3]])


def test_fit_log_depth_statistics_matches_torch():
    depths = [sample_images("depth", seed=seed) for seed in range(3)]
    mean, std = fit_log_depth_statistics(depths)
    logs = torch.cat([d.flatten() for d in depths]).double().log()
    assert mean == pytest.approx(logs.mean().item(), rel=1e-9)
    assert std == pytest.approx(logs.std(unbiased=False).item(), rel=1e-9)


def test_bad_input_gets_clear_errors():
    rgb = tiny_tokenizer("rgb").eval()
    with pytest.raises(ValueError, match=r"rgb images must be \[B, 3, H, W\]"):
        rgb.encode(torch.rand(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="not a positive multiple of the tokenizer's downsampling factor 4"):
        rgb.encode(torch.rand(2, 3, 18, SIZE))
    with pytest.raises(ValueError, match="codes must lie in"):
        rgb.decode(torch.full((1, 4, 4), 10_000))
    semseg = tiny_tokenizer("semseg").eval()
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 5\)"):
        semseg.encode(torch.full((1, SIZE, SIZE), 7))
    with pytest.raises(ValueError, match="integer class ids"):
        semseg.encode(torch.zeros(1, SIZE, SIZE))
    with pytest.raises(RuntimeError, match="eval mode"):
        tiny_tokenizer("rgb").encode(sample_images("rgb"))
    with pytest.raises(ValueError, match="unknown image tokenizer modality 'edges'"):
        build_image_tokenizer("edges", FSQ([4, 4]))
    with pytest.raises(ValueError, match="one width per resolution level: 4 entries for downsample 8"):
        build_image_tokenizer("rgb", FSQ([4, 4]), downsample=8, channels=[8, 8])
    with pytest.raises(ValueError, match="power of two"):
        build_image_tokenizer("rgb", FSQ([4, 4]), downsample=6, channels=[8, 8])
    with pytest.raises(ValueError, match="needs num_classes"):
        build_image_tokenizer("semseg", FSQ([4, 4]), downsample=2, channels=[8, 8])
    with pytest.raises(ValueError, match="unknown pixel_loss 'l3'"):
        ReconstructionLoss("rgb", pixel_loss="l3")


def naive_psnr(prediction, target, peak):
    values = []
    for p, t in zip(prediction, target, strict=True):
        mse = ((p - t) ** 2).mean().item()
        values.append(10 * math.log10((peak if peak is not None else (t.max() - t.min()).item()) ** 2 / mse))
    return sum(values) / len(values)


def naive_miou(predicted, target, num_classes):
    ious = []
    for c in range(num_classes):
        p, t = predicted == c, target == c
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return sum(ious) / len(ious)


@pytest.mark.parametrize("modality, peak", [("rgb", 1.0), ("normal", 2.0), ("depth", None)])
def test_reconstruction_loss_pixels_against_naive(modality, peak):
    target = sample_images(modality, batch=3)
    recon = target + 0.05 * torch.randn_like(target)
    recon = recon.clamp_min(0.1) if modality == "depth" else recon
    usage = torch.tensor([4.0, 0.0, 2.0, 2.0])
    data = {modality: target, f"{modality}_recon": recon, f"{modality}_vq_loss": torch.tensor(0.3)}
    data[f"{modality}_vq_usage"] = usage
    loss, metrics = ReconstructionLoss(modality, pixel_loss="mse", vq_weight=2.0)(data)
    if modality == "depth":  # compared in log-depth
        expected = ((recon.log() - target.log()) ** 2).mean() + 2.0 * 0.3
    else:
        expected = ((recon - target) ** 2).mean() + 2.0 * 0.3
    torch.testing.assert_close(loss, expected)
    assert metrics["psnr"].item() == pytest.approx(naive_psnr(recon, target, peak), rel=1e-5)
    assert metrics["codebook_usage"].item() == 0.75
    probabilities = torch.tensor([0.5, 0.25, 0.25])
    assert metrics["perplexity"].item() == pytest.approx(math.exp(-(probabilities * probabilities.log()).sum()))


def test_chroma_weight_adds_the_hue_error_against_naive():
    target = sample_images("rgb", batch=2)
    recon = target.mean(dim=1, keepdim=True).expand_as(target) + 0.01  # right brightness, no colour
    data = {"rgb": target, "rgb_recon": recon, "rgb_vq_loss": torch.tensor(0.0), "rgb_vq_usage": torch.ones(4)}
    plain, _ = ReconstructionLoss("rgb")(data)
    weighted, _ = ReconstructionLoss("rgb", chroma_weight=2.0)(data)
    grey_free = target - target.mean(dim=1, keepdim=True)
    torch.testing.assert_close(weighted - plain, 2.0 * grey_free.abs().mean())
    with pytest.raises(ValueError, match="only applies to rgb"):
        ReconstructionLoss("depth", chroma_weight=1.0)


def test_reconstruction_loss_semseg_against_naive():
    target = sample_images("semseg", batch=2)
    logits = torch.randn(2, NUM_CLASSES, SIZE, SIZE) + 3 * F.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2)
    data = {
        "semseg": target,
        "semseg_recon": logits,
        "semseg_vq_loss": torch.tensor(0.0),
        "semseg_vq_usage": torch.ones(8),
    }
    loss, metrics = ReconstructionLoss("semseg")(data)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))
    assert metrics["miou"].item() == pytest.approx(naive_miou(logits.argmax(1), target, NUM_CLASSES))
    assert mean_iou(target, target, NUM_CLASSES).item() == 1.0
    assert codebook_usage(torch.ones(8)).item() == 1.0
    assert psnr(torch.zeros(1, 4), torch.full((1, 4), 0.1), 1.0).item() == pytest.approx(20.0, rel=1e-5)


@pytest.mark.parametrize("modality, quantizer", [("rgb", "vq"), ("semseg", "fsq"), ("depth", "fsq")])
def test_a_few_optimizer_steps_reduce_the_loss(modality, quantizer):
    tokenizer = tiny_tokenizer(modality, quantizer)
    objective = ReconstructionLoss(modality)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=3e-3)
    images = sample_images(modality, batch=4, seed=1)
    losses = []
    for _ in range(25):
        loss, _ = objective(tokenizer({modality: images}))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]


RECIPE = """
defaults:
  - {repo}/configs/tokenizers/{tokenizer}.yaml
constants:
  data_root: {root}
  image_size: 16
  batch_size: 4
  downsample: 4
  channels: [8, 16, 16]
  codebook_size: 32
  latent_dim: 8
  warmup_steps: 1
data:
  cache_dir: {root}/cache
"""


def write_recipe(config: Path, tokenizer: str, root: Path, out: Path, **settings: object) -> Path:
    """configs/tokenizers/``tokenizer``.yaml at a tiny size on the scenes in ``root``, 5 debug steps writing to
    ``out``; ``settings`` adds keys to the experiment section."""
    experiment = experiment_block(
        out, total_steps=5, log_every=1, eval_every=5, eval_steps=1, ckpt_every=5, debug="true", **settings
    )
    config.write_text(RECIPE.format(repo=REPO, tokenizer=tokenizer, root=root) + experiment)
    return config


def test_tiny_recipe_trains_logs_psnr_and_exported_weights_give_the_same_codes(tmp_path):
    root = tmp_path / "scenes"
    write_shards(root, num_samples=16, samples_per_shard=4, seed=3, size=SIZE, modalities=("rgb",))
    trainer = Trainer(load_config(write_recipe(tmp_path / "rgb.yaml", "rgb_tiny", root, tmp_path / "run")))
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    assert {"psnr", "codebook_usage", "perplexity", "recon_loss", "vq_loss"} <= set(train[-1])
    assert all(math.isfinite(r["psnr"]) for r in train)
    assert any(r["split"] == "val" and "psnr" in r for r in records)

    export_dir = export_weights(trainer.model, tmp_path / "export", trainer.config_yaml).parent
    reloaded = instantiate(OmegaConf.create((export_dir / "config.yaml").read_text()).model)
    missing, unused = load_pretrained(reloaded, export_dir, strict=True)
    assert missing == [] and unused == []
    images = sample_images("rgb", batch=3, size=SIZE, seed=4)
    trained = trainer.model.eval()
    assert torch.equal(reloaded.eval().encode(images), trained.encode(images))
    torch.testing.assert_close(reloaded.decode(trained.encode(images)), trained.decode(trained.encode(images)))


class PoisonedLoader:
    """The training loader, with NaN ``key`` maps in the batches numbered ``poisoned`` (1-based)."""

    def __init__(self, loader, poisoned: set[int], key: str):
        self.loader, self.poisoned, self.key, self.served = loader, poisoned, key, 0

    def __next__(self):
        batch = next(self.loader)
        self.served += 1
        if self.served in self.poisoned:
            batch[self.key] = torch.full_like(batch[self.key], float("nan"))
        return batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nan_batch_leaves_the_ema_codebook_as_it_was(policy, tmp_path):
    """The VQ codebook's EMA statistics update inside forward: a non-finite step must not commit them (the normal
    map recipe's VQ codebook)."""
    root = tmp_path / "scenes"
    write_shards(root, num_samples=16, samples_per_shard=4, seed=3, size=SIZE, modalities=("normal",))
    nonfinite = f"{{policy: {policy}, max_skips: 5}}"
    config = write_recipe(tmp_path / "normal.yaml", "normal_tiny", root, tmp_path / "run", nonfinite=nonfinite)
    trainer = Trainer(load_config(config))
    trainer.data.train = PoisonedLoader(trainer.data.train, {3, 4}, "normal")
    quantizer_state = {}

    def remember_before_step_3(step=trainer.train_step):
        if trainer.progress.step == 2:
            quantizer_state.update({k: v.clone() for k, v in trainer.model.state_dict().items() if "ema" in k})
        return step()

    trainer.train_step = remember_before_step_3
    if policy == "stop":
        with pytest.raises(TrainingStopped, match="non-finite"):
            trainer.fit()
        reloaded = Trainer(load_config(config))  # resumes the stop checkpoint (step 3)
        reloaded.resume()
        assert reloaded.progress.step == 3
        state = reloaded.model.state_dict()
    else:
        trainer.fit()
        assert trainer.progress.skipped_steps == 2
        state = trainer.model.state_dict()
    assert quantizer_state and all(torch.isfinite(state[k]).all() for k in quantizer_state)
    if policy == "stop":
        assert all(torch.equal(state[k], v) for k, v in quantizer_state.items())  # the last finite state
