import pytest
import torch

from polymodal.models.layers.attention import Attention
from polymodal.models.layers.block import Transformer, TransformerBlock, build_transformer
from polymodal.models.layers.masks import document_mask
from polymodal.models.layers.mlp import MLP, QuickGELU, SwiGLU
from polymodal.models.layers.norm import LayerNorm, PerHeadLayerNorm, RMSNorm
from polymodal.models.layers.rope import AxialRotaryEmbedding2D, RotaryEmbedding


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(std=0.2)
    return module.eval()


def test_block_is_pre_norm_residual_composition():
    block = randomise(TransformerBlock(16, Attention(16, 2), MLP(16, 32), norm=LayerNorm))
    x = torch.randn(2, 5, 16)
    hidden = x + block.attn(block.attn_norm(x), is_causal=True)
    expected = hidden + block.mlp(block.mlp_norm(hidden))
    torch.testing.assert_close(block(x, is_causal=True), expected)
    assert isinstance(block.attn_norm, LayerNorm) and isinstance(block.mlp_norm, LayerNorm)


def test_res_post_norm_block_normalises_each_branch_output():
    block = randomise(TransformerBlock(16, Attention(16, 2), MLP(16, 32), res_post_norm=True))
    x = torch.randn(2, 5, 16)
    hidden = x + block.attn_norm(block.attn(x, is_causal=True))
    expected = hidden + block.mlp_norm(block.mlp(hidden))
    torch.testing.assert_close(block(x, is_causal=True), expected)


class Doubling(torch.nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("res_post_norm", [False, True])
def test_residual_dropout_acts_on_branch_outputs_in_training_only(res_post_norm):
    def block(**kwargs):
        return randomise(TransformerBlock(16, Attention(16, 2), MLP(16, 32), res_post_norm=res_post_norm, **kwargs))

    x = torch.randn(2, 5, 16)
    dropped = block(residual_dropout=0.5)
    assert isinstance(dropped.residual_dropout, torch.nn.Dropout) and dropped.residual_dropout.p == 0.5
    torch.testing.assert_close(dropped(x), block()(x))  # eval: no dropout
    assert not torch.allclose(dropped.train()(x), block()(x))

    spied = block()
    spied.residual_dropout = Doubling()  # where the dropout sits: on each branch output, before the residual add
    attended = spied.attn_norm(spied.attn(x)) if res_post_norm else spied.attn(spied.attn_norm(x))
    hidden = x + 2 * attended
    transformed = spied.mlp_norm(spied.mlp(hidden)) if res_post_norm else spied.mlp(spied.mlp_norm(hidden))
    torch.testing.assert_close(spied(x), hidden + 2 * transformed)


def test_transformer_runs_blocks_in_order_then_final_norm():
    blocks = [TransformerBlock(16, Attention(16, 2), SwiGLU(16, 32)) for _ in range(3)]
    model = randomise(Transformer(blocks, RMSNorm(16)))
    assert isinstance(model.blocks, torch.nn.ModuleList)
    x = torch.randn(2, 5, 16)
    mask = document_mask(torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]))
    expected = x
    for block in blocks:
        expected = block(expected, mask)
    torch.testing.assert_close(model(x, mask), model.final_norm(expected))
    torch.testing.assert_close(Transformer(blocks, None)(x, mask), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mlp": "gelu", "norm": "layernorm", "norm_bias": False, "rope": None, "qkv_bias": True},
        {"num_kv_heads": 2, "qk_norm": True, "rope": "2d", "grid_size": (2, 3), "num_prefix_tokens": 1},
        {"mlp": "quick_gelu", "norm": "layernorm", "rope": None, "qkv_bias": True, "out_bias": True},
    ],
)
def test_build_transformer_variants(kwargs):
    model = randomise(build_transformer(32, depth=3, num_heads=4, multiple_of=16, **kwargs))
    x = torch.randn(2, 7, 32)
    out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    first = model.blocks[0]
    assert first.attn.num_kv_heads == kwargs.get("num_kv_heads", 4)
    assert (first.attn.q_norm is not None) == kwargs.get("qk_norm", False)
    assert (first.attn.o_proj.bias is not None) == kwargs.get("out_bias", False)
    expected_norm = LayerNorm if kwargs.get("norm") == "layernorm" else RMSNorm
    assert isinstance(model.final_norm, expected_norm)
    if kwargs.get("norm") == "layernorm":
        assert (first.attn_norm.bias is None) == (kwargs.get("norm_bias") is False)
    if kwargs.get("mlp") in ("gelu", "quick_gelu"):
        assert isinstance(first.mlp, MLP) and first.mlp.fc1.out_features == 128
        assert isinstance(first.mlp.act, QuickGELU if kwargs["mlp"] == "quick_gelu" else torch.nn.GELU)
    else:
        assert isinstance(first.mlp, SwiGLU) and first.mlp.hidden_dim == 96
    rope_class = {None: type(None), "2d": AxialRotaryEmbedding2D}.get(kwargs.get("rope", "1d"), RotaryEmbedding)
    assert isinstance(first.attn.rope, rope_class)


def test_build_transformer_chameleon_options():
    model = build_transformer(
        32, depth=2, num_heads=4, num_kv_heads=2, qk_norm="per_head_layernorm", norm_eps=1e-5, ffn_dim=40,
        residual_dropout=0.1, res_post_norm=True,
    )  # fmt: skip
    first = model.blocks[0]
    assert isinstance(first.attn.q_norm, PerHeadLayerNorm) and first.attn.k_norm.weight.shape == (2, 8)
    assert first.attn_norm.eps == model.final_norm.eps == 1e-5
    assert first.mlp.hidden_dim == 40 and first.res_post_norm and first.residual_dropout.p == 0.1
    assert build_transformer(32, depth=1, num_heads=4, mlp="gelu", ffn_dim=40).blocks[0].mlp.fc1.out_features == 40
    assert isinstance(build_transformer(32, depth=1, num_heads=4).blocks[0].residual_dropout, torch.nn.Identity)


def test_build_transformer_drop_path_grows_linearly_and_final_norm_optional():
    model = build_transformer(16, depth=5, num_heads=2, drop_path=0.2, final_norm=False)
    rates = [block.drop_path.p for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert model.final_norm is None


def test_causal_and_document_masks_reach_every_block():
    model = randomise(build_transformer(16, depth=2, num_heads=2, multiple_of=8))
    x = torch.randn(1, 6, 16)
    perturbed = x.clone()
    perturbed[0, 5] += 1.0
    torch.testing.assert_close(model(x, is_causal=True)[0, :5], model(perturbed, is_causal=True)[0, :5])
    documents = document_mask(torch.tensor([[0, 0, 0, 1, 1, 1]]), causal=False)
    perturbed = x.clone()
    perturbed[0, 0] += 1.0
    torch.testing.assert_close(model(x, documents)[0, 3:], model(perturbed, documents)[0, 3:])
    assert not torch.allclose(model(x)[0, 3:], model(perturbed)[0, 3:])


def test_block_bf16_autocast_forward_on_cpu():
    model = randomise(build_transformer(32, depth=2, num_heads=4, num_kv_heads=2, qk_norm=True, multiple_of=16))
    x = torch.randn(2, 6, 32)
    reference = model(x, is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, is_causal=True)
    assert out.dtype == torch.float32  # the final RMSNorm returns its input's dtype, fp32 residual stream
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, atol=0.1, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block_out = model.blocks[0](x.bfloat16(), is_causal=True)
    assert block_out.dtype == torch.bfloat16
    block_out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.blocks[0].parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mlp": "relu"}, "mlp"),
        ({"norm": "batchnorm"}, "norm"),
        ({"rope": "3d"}, "rope"),
        ({"rope": "2d"}, "grid_size"),
        ({"depth": 0}, "depth"),
        ({"num_heads": 3}, "divisible"),
        ({"residual_dropout": 1.0}, "residual_dropout"),
    ],
)
def test_build_transformer_rejects_bad_options(kwargs, message):
    arguments = {"dim": 16, "depth": 2, "num_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_transformer(**arguments)
