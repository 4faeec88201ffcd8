"""MLPHead against a plain computation; it drops extra tokens and never mixes positions."""

import pytest
import torch
import torch.nn.functional as F

from polymodal.models.layers.posembed import sincos_2d
from polymodal.models.mlp_head import MLPHead


def test_head_matches_a_plain_computation():
    torch.manual_seed(0)
    head = MLPHead(dim=8, out_dim=12, width=16, depth=2, grid_size=(2, 3))
    tokens = torch.randn(2, 1 + 6, 8)
    out = head({"tokens": tokens, "num_extra_tokens": 1})["pixel_pred"]

    def layer_norm(x, norm):
        return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps=1e-6)

    x = tokens[:, 1:] @ head.proj_in.weight.T + head.proj_in.bias + sincos_2d(2, 3, 16)
    for block in head.blocks:
        hidden = F.gelu(layer_norm(x, block.norm) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
        x = x + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    expected = layer_norm(x, head.norm) @ head.proj_out.weight.T + head.proj_out.bias
    assert out.shape == (2, 6, 12)
    torch.testing.assert_close(out, expected)


def test_each_prediction_depends_on_its_own_token_only():
    torch.manual_seed(0)
    head = MLPHead(dim=8, out_dim=4, depth=1, extra_tokens_key=None)
    tokens = torch.randn(1, 5, 8, requires_grad=True)
    head({"tokens": tokens})["pixel_pred"][0, 2].sum().backward()
    touched = tokens.grad[0].abs().sum(dim=-1) > 0
    assert touched.tolist() == [False, False, True, False, False]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="depth"):
        MLPHead(dim=8, out_dim=4, depth=-1)
    head = MLPHead(dim=8, out_dim=4, grid_size=(2, 2), extra_tokens_key=None)
    with pytest.raises(ValueError, match="grid"):
        head({"tokens": torch.randn(1, 5, 8)})
