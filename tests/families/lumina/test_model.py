"""configs/lumina's model parts build Chameleon's published shapes (on the meta device) and the tiny one trains."""

import pytest
import torch

from polymodal.config import instantiate, load_config
from polymodal.families.lumina.model import build_chameleon
from polymodal.models.layers.norm import PerHeadLayerNorm
from polymodal.models.llm import CausalLM


def model_part(name: str):
    """A shipped Lumina config; the model part alone gets the sections an experiment adds (data, optim) empty."""
    return load_config(f"lumina/{name}", ["+data={}", "+optim={}"] if name == "model" else [])


def chameleon_parameters(vocab, dim, depth, heads, kv_heads, ffn) -> int:
    """Embedding + untied head, then per layer q/o, k/v, SwiGLU, two RMSNorms and per-head q/k LayerNorms."""
    head_dim = dim // heads
    layer = 2 * dim * dim + 2 * dim * kv_heads * head_dim + 3 * dim * ffn + 2 * dim + 2 * (heads + kv_heads) * head_dim
    return 2 * vocab * dim + depth * layer + dim


@pytest.mark.parametrize(
    ("name", "shape", "swin_norm", "billions"),
    [
        ("7b", (65536, 4096, 32, 32, 32, 11008), False, 7.01),
        ("34b", (65536, 8192, 48, 64, 8, 22016), True, 34.29),
    ],
)
def test_published_sizes_build_on_meta_with_their_parameter_counts(name, shape, swin_norm, billions):
    cfg = model_part(name)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert isinstance(model, CausalLM)
    count = sum(p.numel() for p in model.parameters())
    assert count == chameleon_parameters(*shape)
    assert count / 1e9 == pytest.approx(billions, abs=0.005)
    block = model.trunk.transformer.blocks[0]
    assert isinstance(block.attn.q_norm, PerHeadLayerNorm) and block.res_post_norm == swin_norm
    assert block.attn_norm.eps == 1e-5 and model.max_seq_len == 4096
    assert model.head.proj.weight is not model.preprocessor.blocks[0].embedding.weight
    assert cfg.loss.z_loss_weight == 1e-5 and cfg.model.residual_dropout == 0.05


def test_tiny_part_trains_a_step_with_the_z_loss():
    cfg = model_part("model")
    torch.manual_seed(0)
    model, loss_fn = instantiate(cfg.model), instantiate(cfg.loss)
    assert sum(p.numel() for p in model.parameters()) < 3e6
    tokens = torch.randint(0, cfg.constants.vocab_size, (2, 33))
    documents = (torch.arange(32) >= 20).long().expand(2, 32)
    batch = {
        "input_ids": tokens[:, :-1],
        "target_ids": tokens[:, 1:],
        "document_ids": documents,
        "position_ids": torch.arange(32) - 20 * documents,
    }
    output = model(dict(batch))
    assert "token_loss" in output and "logits" not in output  # the head's chunked loss, the default
    loss, metrics = loss_fn(output)
    assert metrics["z_loss"] == pytest.approx(1e-5 * metrics["log_z_squared"].item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_residual_dropout_reaches_every_block_and_swin_norm_its_order():
    model = build_chameleon(
        64, 32, depth=2, num_heads=4, num_kv_heads=2, ffn_dim=48, residual_dropout=0.1, swin_norm=True
    )
    for block in model.trunk.transformer.blocks:
        assert block.residual_dropout.p == 0.1 and block.res_post_norm
        assert block.attn.k_norm.weight.shape == (2, 8) and block.mlp.hidden_dim == 48
