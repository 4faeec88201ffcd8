"""The MoE feed-forward against a plain per-token reference: routing, capacity drops, combine weights, aux stats."""

import math

import pytest
import torch

from polymodal.models.flops import matmul_params
from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.init import init_weights
from polymodal.models.layers.moe import GroupedExperts, MoEFeedForward
from polymodal.models.llm import build_llm
from polymodal.models.meta import MetaModel, WeightedObjectives
from polymodal.models.parts import LinearHead, TransformerTrunk
from polymodal.objectives.classification import ClassificationLoss
from polymodal.objectives.lm import NextTokenLoss
from polymodal.objectives.moe import MoEAuxLoss


def reference_moe(moe: MoEFeedForward, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Token by token: route, fill each expert's slots in token order up to capacity, run the expert alone."""
    tokens = x.reshape(-1, x.shape[-1])
    num_experts, k = moe.num_experts, moe.top_k
    logits = tokens.double() @ moe.router.weight.double().T
    probs = logits.softmax(-1)
    choices = []
    loads = [0] * num_experts
    for n in range(tokens.shape[0]):
        weights, experts = probs[n].topk(k)
        if moe.normalize_top_k:
            weights = weights / weights.sum()
        for weight, expert in zip(weights.tolist(), experts.tolist(), strict=True):
            choices.append((n, expert, weight))
            loads[expert] += 1
    if moe.capacity_factor is None:
        capacity = max(loads)
    else:
        capacity = math.ceil(moe.capacity_factor * tokens.shape[0] * k / num_experts)
    filled = [0] * num_experts
    out = torch.zeros_like(tokens)
    dropped = 0
    for n, expert, weight in choices:
        if filled[expert] == capacity:
            dropped += 1
            continue
        filled[expert] += 1
        out[n] += weight * moe.experts.expert_forward(tokens[n : n + 1], expert)[0]
    slots = len(choices)
    fractions = [load / slots for load in loads]
    mean_probs = probs.mean(0).tolist()
    stats = {
        "balance_loss": num_experts * sum(f * p for f, p in zip(fractions, mean_probs, strict=True)),
        "router_z_loss": (logits.logsumexp(-1) ** 2).mean().item(),
        "dropped_fraction": dropped / slots,
        "max_load_fraction": max(fractions),
    }
    return out.view(x.shape), stats


@pytest.mark.parametrize(
    "kind, top_k, capacity_factor, normalize",
    [
        ("swiglu", 1, None, False),
        ("swiglu", 2, 0.5, True),
        ("geglu", 2, 1.0, False),
        ("gelu", 1, 0.75, False),
        ("quick_gelu", 3, None, True),
    ],
)
def test_moe_equals_per_token_reference(kind, top_k, capacity_factor, normalize):
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 12, 4, top_k, capacity_factor, kind, bias=kind in ("gelu", "quick_gelu"),
                         normalize_top_k=normalize)  # fmt: skip
    if moe.experts.b1 is not None:
        torch.nn.init.normal_(moe.experts.b1)
        torch.nn.init.normal_(moe.experts.b2)
    x = torch.randn(3, 7, 8)
    out, stats = moe(x)
    expected, expected_stats = reference_moe(moe, x)
    torch.testing.assert_close(out, expected)
    for name, value in expected_stats.items():
        assert stats[name].item() == pytest.approx(value, rel=1e-5, abs=1e-7), name
    if capacity_factor is not None and capacity_factor < 1:
        assert stats["dropped_fraction"] > 0  # the capacity case really drops


def test_dropless_equals_a_capacity_that_never_drops():
    torch.manual_seed(0)
    dropless = MoEFeedForward(8, 12, 4, top_k=2)
    roomy = MoEFeedForward(8, 12, 4, top_k=2, capacity_factor=4.0)  # C = tokens * k: nothing can drop
    roomy.load_state_dict(dropless.state_dict())
    x = torch.randn(2, 9, 8)
    (out, stats), (roomy_out, roomy_stats) = dropless(x), roomy(x)
    torch.testing.assert_close(out, roomy_out)
    assert stats["dropped_fraction"] == 0 and roomy_stats["dropped_fraction"] == 0


def test_grouped_experts_equal_a_loop_over_experts():
    torch.manual_seed(0)
    for kind in ("swiglu", "gelu"):
        experts = GroupedExperts(3, 8, 16, kind, bias=True)
        buffer = torch.randn(3, 5, 8)
        looped = torch.stack([experts.expert_forward(buffer[e], e) for e in range(3)])
        torch.testing.assert_close(experts(buffer), looped)


def test_gradients_reach_router_and_experts():
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 12, 4, top_k=2, normalize_top_k=False)
    out, stats = moe(torch.randn(10, 8))
    (out.square().sum() + stats["balance_loss"] + stats["router_z_loss"]).backward()
    for name, param in moe.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_experts": 0}, "num_experts must be >= 1"),
        ({"num_experts": 2, "top_k": 3}, "top_k must be in"),
        ({"num_experts": 2, "top_k": 0}, "top_k must be in"),
        ({"num_experts": 2, "capacity_factor": 0.0}, "capacity_factor must be > 0"),
        ({"num_experts": 2, "kind": "relu"}, "expert kind must be one of"),
    ],
)
def test_bad_moe_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEFeedForward(8, 12, **kwargs)


def test_build_transformer_rejects_unknown_moe_option():
    with pytest.raises(ValueError, match=r"unknown moe option\(s\) \['experts'\]"):
        build_transformer(16, 1, 2, moe={"experts": 4})
    with pytest.raises(ValueError, match="moe needs num_experts"):
        build_transformer(16, 1, 2, moe={"top_k": 1})


def test_transformer_trunk_writes_per_layer_stats():
    torch.manual_seed(0)
    transformer = build_transformer(16, 3, 2, mlp="gelu", rope=None, moe={"num_experts": 4, "top_k": 2})
    assert transformer.has_moe and transformer.blocks[0].mlp.experts.kind == "gelu"
    trunk = TransformerTrunk(transformer, mask_key=None, position_key=None, cache_key=None)
    assert trunk.write_keys == ("hidden", "moe_stats")
    data = trunk({"hidden": torch.randn(2, 5, 16)})
    assert data["hidden"].shape == (2, 5, 16)
    assert {name: tuple(value.shape) for name, value in data["moe_stats"].items()} == {
        "balance_loss": (3,), "router_z_loss": (3,), "dropped_fraction": (3,), "max_load_fraction": (3,)
    }  # fmt: skip
    loss, metrics = MoEAuxLoss(balance_weight=0.01, z_loss_weight=0.001)(data)
    stats = data["moe_stats"]
    torch.testing.assert_close(loss, 0.01 * stats["balance_loss"].mean() + 0.001 * stats["router_z_loss"].mean())
    assert set(metrics) == {"balance_loss", "router_z_loss", "dropped_fraction", "max_load_fraction"}


def test_aux_loss_without_stats_is_a_clear_error():
    with pytest.raises(KeyError, match="no trunk wrote"):
        MoEAuxLoss()({"hidden": torch.zeros(1)})


def test_one_layer_moe_transformer_trains():
    torch.manual_seed(0)
    transformer = build_transformer(16, 1, 2, rope=None, multiple_of=8, moe={"num_experts": 4, "top_k": 1})
    model = MetaModel(
        trunk=TransformerTrunk(transformer, "tokens", "tokens", mask_key=None, position_key=None, cache_key=None),
        head=LinearHead(16, 3, read_key="tokens", write_key="logits"),
    )
    objective = WeightedObjectives({"ce": ClassificationLoss(), "moe": MoEAuxLoss()})
    tokens = torch.randn(16, 1, 16)
    labels = torch.randint(0, 3, (16,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        data = model({"tokens": tokens})
        data["logits"] = data["logits"][:, 0]
        data["label"] = labels
        loss, metrics = objective(data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert {"moe/balance_loss", "moe/router_z_loss", "moe/dropped_fraction"} <= set(metrics)


def test_init_weights_draws_each_expert_like_a_dense_linear():
    torch.manual_seed(0)
    transformer = build_transformer(64, 2, 2, mlp="gelu", rope=None, moe={"num_experts": 8})
    init_weights(transformer, "normal", std=0.02, depth=2)
    experts = transformer.blocks[0].mlp.experts
    assert experts.w1.std().item() == pytest.approx(0.02, rel=0.05)
    assert experts.w2.std().item() == pytest.approx(0.02 / 2, rel=0.05)  # residual projection: std / sqrt(2 depth)
    assert experts.b1.abs().sum() == 0 and experts.b2.abs().sum() == 0
    assert transformer.blocks[0].mlp.router.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_xavier_draws_each_expert_within_its_own_glorot_bound():
    torch.manual_seed(0)
    transformer = build_transformer(64, 2, 2, mlp="swiglu", rope=None, multiple_of=32, moe={"num_experts": 8})
    init_weights(transformer, "xavier", depth=2)
    experts = transformer.blocks[0].mlp.experts
    bound = math.sqrt(6.0 / (experts.dim + experts.hidden_dim))  # one expert's fans, not the stacked tensor's
    for weight, scale in ((experts.w1, 1.0), (experts.w3, 1.0), (experts.w2, 0.5)):
        assert weight.abs().max().item() <= scale * bound
        assert weight.abs().max().item() == pytest.approx(scale * bound, rel=0.01)  # uniform: the bound is reached


def test_router_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    moe = MoEFeedForward(16, 24, 4, top_k=2)
    x = torch.randn(4, 6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, stats = moe(x)
    _, fp32_stats = moe(x)
    assert out.dtype == torch.float32  # the residual stream's dtype
    torch.testing.assert_close(stats["router_z_loss"], fp32_stats["router_z_loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(stats["balance_loss"], fp32_stats["balance_loss"], rtol=1e-6, atol=0)


def test_matmul_params_count_the_router_and_top_k_experts():
    transformer = build_transformer(16, 2, 2, mlp="gelu", rope=None, ffn_dim=24, moe={"num_experts": 4, "top_k": 2})
    attention = 4 * 16 * 16
    per_expert = 16 * 24 + 24 * 16
    assert matmul_params(transformer) == 2 * (attention + 16 * 4 + 2 * per_expert)


def test_llm_with_moe_trains_flops_and_generates():
    torch.manual_seed(0)
    model = build_llm(vocab_size=32, dim=16, depth=2, num_heads=2, max_seq_len=16, multiple_of=8,
                      moe={"num_experts": 4, "top_k": 2})  # fmt: skip
    tokens = torch.randint(0, 32, (2, 9))
    batch = {"input_ids": tokens[:, :-1], "target_ids": tokens[:, 1:], "document_ids": torch.zeros(2, 8).long(),
             "position_ids": torch.arange(8).expand(2, 8)}  # fmt: skip
    data = model(dict(batch))
    assert data["moe_stats"]["balance_loss"].shape == (2,)
    objective = WeightedObjectives({"lm": NextTokenLoss(), "moe": MoEAuxLoss()})
    loss, _ = objective(data)
    loss.backward()
    assert all(p.grad is not None for p in model.trunk.transformer.blocks[0].mlp.parameters())
    hidden = model.trunk.transformer.blocks[0].mlp.experts.hidden_dim
    active = 2 * (4 * 16 * 16 + 16 * 4 + 2 * 3 * 16 * hidden) + 32 * 16  # blocks, then the head
    assert model.train_flops(batch) == (6 * active + 12 * 2 * 16 * 8) * 16
    assert model.generate(tokens[:, :4], max_new_tokens=3, temperature=0).shape == (2, 7)
