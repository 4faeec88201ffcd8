"""FLOPs counted by FlopCounterMode on a fake-tensor twin, for models without an analytic ``train_flops``: equal to
the analytic counts where both exist, counted once per batch shape, logged as MFU by the trainer, and invisible to
the training trajectory."""

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parallel_runs import torchrun
from torch import nn
from trainer_configs import REPO, experiment_block, optim_header

from polymodal.config import load_config
from polymodal.data.synth.writers import write_shards
from polymodal.models.clip import build_clip
from polymodal.models.llm import build_llm
from polymodal.models.meta import ModuleBlock
from polymodal.train.flop_count import StepFlopCounter, flop_counter, shape_signature
from polymodal.train.trainer import Trainer


def llm() -> nn.Module:
    torch.manual_seed(0)
    return build_llm(vocab_size=256, dim=64, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=128, multiple_of=8)


def llm_batch(batch_size: int, seq_len: int) -> dict:
    documents = torch.zeros(batch_size, seq_len, dtype=torch.long)
    documents[:, seq_len // 2 :] = 1  # two documents per row: the document mask is built from values
    positions = torch.cat([torch.arange(seq_len // 2), torch.arange(seq_len - seq_len // 2)]).expand(batch_size, -1)
    tokens = torch.randint(0, 256, (batch_size, seq_len))
    return {"input_ids": tokens, "document_ids": documents, "position_ids": positions}


def clip() -> nn.Module:
    torch.manual_seed(0)
    return build_clip(
        16, vision=dict(image_size=32, patch_size=4, dim=32, depth=2, num_heads=2), text=dict(vocab_size=50,
        context_length=48, dim=32, depth=2, num_heads=2),
    )  # fmt: skip


@pytest.mark.usefixtures("single_thread")
def test_cpu_attention_is_counted_as_its_matmuls():
    """Forward QK^T and AV (2·2·B·H·T²·D), backward twice that; the kernel's recompute is not counted."""
    b, h, t, d = 2, 4, 64, 16
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    with flop_counter() as counter:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    forward = 2 * 2 * b * h * t * t * d
    assert counter.get_total_flops() == forward
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    assert counter.get_total_flops() == 3 * forward
    assert out.shape == (b, h, t, d)


@pytest.mark.usefixtures("single_thread")
def test_counts_match_the_analytic_llm_and_clip_counts():
    """Both follow the same conventions (2 FLOPs per multiply-accumulate, backward = 2x forward, dense attention,
    norms, activations and softmax left out). They differ where the count sees what runs and the formula does not:
    CLIP's patch projection computes no input gradient (2x, not 3x, its forward), and the LM head's chunked loss
    (given targets) recomputes its logits in the backward, one more 2·D·V per labelled row."""
    batch = llm_batch(2, 128)
    assert StepFlopCounter(llm)(batch) == llm().train_flops(batch)  # without targets the head writes logits
    batch["target_ids"] = torch.randint(0, 256, (2, 128))
    assert StepFlopCounter(llm)(batch) == llm().train_flops(batch) + 2 * 64 * 256 * (2 * 128)
    assert StepFlopCounter(llm)(batch) == pytest.approx(llm().train_flops(batch), rel=0.05)
    batch = {"image": torch.rand(3, 3, 32, 32), "text_ids": torch.randint(0, 50, (3, 40))}
    assert StepFlopCounter(clip)(batch) == pytest.approx(clip().train_flops(batch), rel=0.02)


def test_each_batch_shape_is_counted_once():
    counter = StepFlopCounter(llm)
    first = counter(llm_batch(2, 64))
    assert counter(llm_batch(2, 64)) == first and counter.counted_signatures == 1
    doubled = counter(llm_batch(4, 64))  # a new shape: counted once more, twice the work
    assert counter.counted_signatures == 2 and doubled == pytest.approx(2 * first)
    assert counter(llm_batch(4, 64)) == doubled and counter.counted_signatures == 2
    assert shape_signature(llm_batch(2, 64)) != shape_signature(llm_batch(2, 32))


def two_linears(frozen_first: bool) -> nn.Module:
    net = nn.Sequential(nn.Linear(32, 32, bias=False), nn.Linear(32, 32, bias=False))
    net[0].weight.requires_grad_(not frozen_first)
    return ModuleBlock(net, "x", "y")


def test_backward_counts_what_is_computed_and_frozen_weights_get_no_gradient():
    """Per Linear on [B, d] inputs: forward 2·B·d², weight gradient 2·B·d² (trainable weights only), input gradient
    2·B·d² (only where something below needs it: the batch does not, nor does a frozen first layer)."""
    b, d = 8, 32
    unit = 2 * b * d * d
    assert StepFlopCounter(lambda: two_linears(False))({"x": torch.randn(b, d)}) == 2 * unit + 3 * unit
    assert StepFlopCounter(lambda: two_linears(True))({"x": torch.randn(b, d)}) == 1 * unit + 2 * unit


class _ValueDependentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.proj(x)
        return hidden[hidden > 0].sum()  # its shape depends on the weights' values


def test_a_model_fake_tensors_cannot_run_is_reported_once_and_gets_no_count(caplog):
    counter = StepFlopCounter(lambda: ModuleBlock(_ValueDependentNet(), "x", "y"), model_name="ValueDependentNet")
    with caplog.at_level(logging.WARNING):
        assert counter({"x": torch.randn(3, 4)}) is None
        assert counter({"x": torch.randn(5, 4)}) is None
    warnings = [r.getMessage() for r in caplog.records if "MFU not logged" in r.getMessage()]
    assert len(warnings) == 1 and "ValueDependentNet" in warnings[0] and "train_flops" in warnings[0]


VIT = """
model:
  _target_: polymodal.models.meta.MetaModel
  preprocessor:
    _target_: polymodal.models.vit.ViTPreprocessor
    image_size: 16
    patch_size: 4
    dim: 32
    cls_token: true
    read_key: rgb
  trunk:
    _target_: polymodal.models.parts.TransformerTrunk
    read_key: tokens
    write_key: tokens
    mask_key: null
    position_key: null
    transformer:
      _target_: polymodal.models.layers.block.build_transformer
      dim: 32
      depth: 2
      num_heads: 4
      mlp: gelu
      norm: layernorm
      rope: null
      drop_path: 0.2
  head:
    - {{_target_: polymodal.models.clip.SelectToken, read_key: tokens, write_key: cls}}
    - {{_target_: polymodal.models.parts.LinearHead, dim: 32, out_dim: 5, read_key: cls, write_key: logits}}
loss:
  _target_: polymodal.objectives.classification.ClassificationLoss
data:
  _target_: polymodal.data.multimodal.data_module.MultimodalData
  train: {root}/[rgb,label]/shard-{{00000..00001}}.tar
  val: {root}/[rgb,label]/shard-{{00000..00001}}.tar
  modalities: [rgb, label]
  image_size: 16
  batch_size: 4
  cache_dir: {root}/cache
"""

VQ_TOKENIZER = """
defaults:
  - {repo}/configs/tokenizers/normal_tiny.yaml
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

RECIPES = {"vit": optim_header() + VIT, "vq_tokenizer": VQ_TOKENIZER}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_shards(root, num_samples=16, samples_per_shard=4, seed=5, size=16, modalities=("rgb", "normal", "label"))
    return root


def write_config(recipe: str, root: Path, out: Path) -> Path:
    """``recipe`` reading the scenes in ``root``, as a short, quiet run writing to ``out``."""
    config = out.with_suffix(".yaml")
    experiment = experiment_block(
        out, total_steps=4, log_every=2, eval_every=4, eval_steps=1, ckpt_every=4, peak_flops=1.0e11
    )
    config.write_text(RECIPES[recipe].format(repo=REPO, root=root) + experiment)
    return config


def trainer(recipe: str, root: Path, out: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(write_config(recipe, root, out), overrides))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_model_without_train_flops_logs_a_positive_mfu(recipe, precision, scenes, tmp_path):
    run = trainer(recipe, scenes, tmp_path / recipe, f"experiment.precision={precision}")
    assert not hasattr(run.model, "train_flops") and run.flop_counter is not None
    run.fit()
    rows = [json.loads(line) for line in (tmp_path / recipe / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert len(train) == 2 and all(0 < row["mfu"] < 1 and row["samples_per_s"] > 0 for row in train)
    assert all("tokens_per_s" not in row for row in train)  # images: samples/s is the one honest unit
    assert run.flop_counter.counted_signatures == 1


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_counting_leaves_the_training_trajectory_bit_identical(recipe, scenes, tmp_path):
    """Drop-path (the ViT) and dead-code restarts (the VQ) draw random numbers, the VQ's EMA codebook is updated by
    the forward: the twin touches neither the RNG streams nor the model's state."""
    counted = trainer(recipe, scenes, tmp_path / "counted")
    counted_steps = [counted.train_step() for _ in range(3)]
    counted_rng = torch.random.get_rng_state()
    plain = trainer(recipe, scenes, tmp_path / "plain")  # seeds the RNG streams as the first did
    plain.flop_counter = None  # no counting: no MFU
    plain_steps = [plain.train_step() for _ in range(3)]
    torch.testing.assert_close(torch.random.get_rng_state(), counted_rng, rtol=0, atol=0)
    assert all(step["flops"] > 0 for step in counted_steps) and all(step["flops"] == 0 for step in plain_steps)
    assert [step["loss"].item() for step in counted_steps] == [step["loss"].item() for step in plain_steps]
    plain_state = plain.model.state_dict()
    for name, value in counted.model.state_dict().items():
        torch.testing.assert_close(value, plain_state[name], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "strategy"), [("vq_tokenizer", "ddp"), ("vit", "fsdp")])
def test_two_ranks_count_and_log_mfu(recipe, strategy, scenes, tmp_path):
    """Under DDP (the VQ's forward all-reduces its codebook statistics) and FSDP2 the twin, in eval mode, runs no
    collective: both ranks count, train and log MFU."""
    out = tmp_path / recipe
    batch_size = "constants.batch_size=2" if recipe == "vq_tokenizer" else "data.batch_size=2"
    torchrun(2, write_config(recipe, scenes, out), batch_size, f"experiment.distributed.strategy={strategy}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert [row["step"] for row in train] == [2, 4] and all(0 < row["mfu"] < 1 for row in train)
