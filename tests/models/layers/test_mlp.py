import pytest
import torch

from polymodal.models.layers.mlp import MLP, QuickGELU, SwiGLU, swiglu_hidden_dim


def test_mlp_matches_explicit_computation():
    torch.manual_seed(0)
    mlp = MLP(8, 20, out_dim=5)
    x = torch.randn(3, 4, 8)
    hidden = torch.nn.functional.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias)
    torch.testing.assert_close(mlp(x), hidden @ mlp.fc2.weight.T + mlp.fc2.bias)
    assert MLP(8, 20).fc2.out_features == 8
    assert MLP(8, 20, bias=False).fc1.bias is None
    assert isinstance(MLP(8, 20, activation=torch.nn.ReLU).act, torch.nn.ReLU)


def test_quick_gelu_is_the_sigmoid_approximation():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(QuickGELU()(x), x / (1 + torch.exp(-1.702 * x)))
    assert (QuickGELU()(x) - torch.nn.functional.gelu(x)).abs().max() < 0.03


def test_swiglu_matches_explicit_computation():
    torch.manual_seed(0)
    swiglu = SwiGLU(8, 24)
    x = torch.randn(3, 4, 8)
    gate = x @ swiglu.fc1.weight.T
    expected = (gate * torch.sigmoid(gate) * (x @ swiglu.fc3.weight.T)) @ swiglu.fc2.weight.T
    torch.testing.assert_close(swiglu(x), expected)
    assert swiglu.fc1.bias is None


@pytest.mark.parametrize("hidden_dim, multiple_of, expected", [(24, 1, 24), (24, 16, 32), (32, 16, 32), (33, 16, 48)])
def test_swiglu_rounds_hidden_up_to_multiple(hidden_dim, multiple_of, expected):
    swiglu = SwiGLU(8, hidden_dim, multiple_of=multiple_of)
    assert swiglu.hidden_dim == expected
    assert swiglu.fc1.out_features == swiglu.fc3.out_features == swiglu.fc2.in_features == expected


def test_swiglu_hidden_dim_llama_convention():
    assert swiglu_hidden_dim(1024) == 2816
    assert swiglu_hidden_dim(768) == 2048  # 2/3 * 4 * 768 is exactly 2048: no float round-up
    assert swiglu_hidden_dim(4096, multiple_of=256) == 11008
    for dim in range(1, 600, 7):
        for multiple_of in (1, 8, 64, 256):
            ceil_units = -(-(2 * 4 * dim) // (3 * multiple_of))
            assert swiglu_hidden_dim(dim, 4.0, multiple_of) == multiple_of * ceil_units
    assert swiglu_hidden_dim(96, mlp_ratio=3.0, multiple_of=32) == 192


@pytest.mark.parametrize(
    "call",
    [
        lambda: swiglu_hidden_dim(0),
        lambda: swiglu_hidden_dim(64, multiple_of=0),
        lambda: swiglu_hidden_dim(64, mlp_ratio=0.0),
        lambda: SwiGLU(8, 0),
        lambda: SwiGLU(8, 16, multiple_of=0),
    ],
)
def test_mlp_rejects_bad_sizes(call):
    with pytest.raises(ValueError):
        call()
