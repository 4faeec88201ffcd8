import math

import pytest
import torch

from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.init import init_weights

# Standard deviation of N(0, 1) truncated to [-2, 2].
TRUNCATED_STD_FACTOR = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / (math.erf(2 / math.sqrt(2))))


def make_model(depth: int = 2, dim: int = 256) -> torch.nn.Module:
    return build_transformer(dim, depth=depth, num_heads=4, mlp="gelu", norm="layernorm", qkv_bias=True)


def test_truncated_std_factor_value():
    assert TRUNCATED_STD_FACTOR == pytest.approx(0.8796, abs=1e-4)


@pytest.mark.parametrize("scheme, factor", [("normal", 1.0), ("trunc_normal", TRUNCATED_STD_FACTOR)])
def test_std_and_scaled_residual_projections(scheme, factor):
    torch.manual_seed(0)
    depth, std = 4, 0.05
    model = make_model(depth)
    init_weights(model, scheme=scheme, std=std, depth=depth)
    block = model.blocks[1]
    assert block.attn.q_proj.weight.std().item() == pytest.approx(std * factor, rel=0.03)
    assert block.mlp.fc1.weight.std().item() == pytest.approx(std * factor, rel=0.03)
    scaled = std / math.sqrt(2 * depth) * factor
    assert block.attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.03)
    assert block.mlp.fc2.weight.std().item() == pytest.approx(scaled, rel=0.03)
    if scheme == "trunc_normal":
        assert block.attn.q_proj.weight.abs().max().item() <= 2 * std
    assert torch.equal(block.attn.q_proj.bias, torch.zeros_like(block.attn.q_proj.bias))
    assert torch.equal(block.mlp.fc1.bias, torch.zeros_like(block.mlp.fc1.bias))


def test_without_depth_residual_projections_are_not_scaled():
    torch.manual_seed(0)
    model = make_model()
    init_weights(model, scheme="normal", std=0.02)
    assert model.blocks[0].attn.o_proj.weight.std().item() == pytest.approx(0.02, rel=0.03)


def test_xavier_bounds_and_scaled_residuals():
    torch.manual_seed(0)
    model = make_model(depth=2)
    init_weights(model, scheme="xavier", depth=2)
    fc1 = model.blocks[0].mlp.fc1.weight
    expected_std = math.sqrt(2 / (fc1.shape[0] + fc1.shape[1]))
    assert fc1.std().item() == pytest.approx(expected_std, rel=0.03)
    fc2 = model.blocks[0].mlp.fc2.weight
    fc2_std = math.sqrt(2 / (fc2.shape[0] + fc2.shape[1])) / 2
    assert fc2.std().item() == pytest.approx(fc2_std, rel=0.03)


def test_norms_embeddings_and_convs_are_reset():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {
            "trunk": make_model(dim=64),
            "tokens": torch.nn.Embedding(500, 64, padding_idx=3),
            "patches": torch.nn.Conv2d(3, 64, kernel_size=4, stride=4),
        }
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(7.0)
    init_weights(model, scheme="normal", std=0.1)
    norm = model["trunk"].blocks[0].attn_norm
    assert torch.equal(norm.weight, torch.ones(64)) and torch.equal(norm.bias, torch.zeros(64))
    assert torch.equal(model["trunk"].final_norm.weight, torch.ones(64))
    tokens = model["tokens"].weight
    assert torch.equal(tokens[3], torch.zeros(64))
    assert tokens.std().item() == pytest.approx(0.1, rel=0.05)
    conv = model["patches"]
    assert conv.weight.std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(conv.bias, torch.zeros(64))


def test_deterministic_under_seed_and_on_meta_then_to_empty():
    torch.manual_seed(0)
    reference = make_model(dim=64)
    torch.manual_seed(123)
    init_weights(reference, depth=2)

    with torch.device("meta"):
        meta_model = make_model(dim=64)
    meta_model = meta_model.to_empty(device="cpu")
    torch.manual_seed(123)
    init_weights(meta_model, depth=2)

    reference_state, meta_state = reference.state_dict(), meta_model.state_dict()
    assert reference_state.keys() == meta_state.keys()
    for key, value in reference_state.items():
        torch.testing.assert_close(meta_state[key], value, rtol=0, atol=0)
    rope = meta_model.blocks[0].attn.rope
    torch.testing.assert_close(rope.cos, reference.blocks[0].attn.rope.cos)
    x = torch.randn(1, 5, 64)
    torch.testing.assert_close(meta_model(x, is_causal=True), reference(x, is_causal=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"scheme": "kaiming"}, "scheme"), ({"std": 0.0}, "std"), ({"depth": 0}, "depth")],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        init_weights(torch.nn.Linear(2, 2), **kwargs)
