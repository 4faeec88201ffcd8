import pytest
import torch

from polymodal.models.layers.norm import LayerNorm, PerHeadLayerNorm, RMSNorm


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-5)
    _randomise(norm)
    x = torch.randn(3, 4, 8)
    expected = x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_formula(bias):
    torch.manual_seed(0)
    norm = LayerNorm(8, bias=bias)
    assert (norm.bias is not None) == bias
    _randomise(norm)
    x = torch.randn(3, 4, 8) * 3 + 1
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight
    if bias:
        expected = expected + norm.bias
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("norm_class", [RMSNorm, LayerNorm])
def test_norms_keep_input_dtype_and_fp32_accuracy_under_bf16_autocast(norm_class):
    torch.manual_seed(0)
    norm = norm_class(16)
    x = torch.randn(2, 5, 16) * 100
    reference = norm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fp32_input = norm(x)
        out_bf16_input = norm(x.bfloat16())
    assert out_fp32_input.dtype == torch.float32
    assert out_bf16_input.dtype == torch.bfloat16
    torch.testing.assert_close(out_fp32_input, reference)
    torch.testing.assert_close(out_bf16_input.float(), norm(x.bfloat16().float()), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("norm_class", [RMSNorm, LayerNorm])
def test_reset_parameters_restores_identity_affine(norm_class):
    norm = norm_class(4)
    _randomise(norm)
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(4))
    if getattr(norm, "bias", None) is not None:
        assert torch.equal(norm.bias, torch.zeros(4))


def test_per_head_layernorm_normalises_each_head_with_its_own_affine():
    torch.manual_seed(0)
    norm = PerHeadLayerNorm(3, 8)
    assert norm.weight.shape == norm.bias.shape == (3, 8)
    _randomise(norm)
    x = torch.randn(2, 5, 3, 8) * 3 + 1  # [B, T, heads, head_dim]
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.bfloat16()).dtype == torch.bfloat16
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(3, 8)) and torch.equal(norm.bias, torch.zeros(3, 8))
