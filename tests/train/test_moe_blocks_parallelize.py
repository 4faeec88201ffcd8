"""MoE blocks under the per-block wrappers of ``parallelize``: activation checkpointing and ``torch.compile``.

A MoE block with a capacity factor has no data-dependent shapes, so it compiles to one graph; a model of such blocks
trains like the eager one with checkpointed and compiled blocks, router statistics included."""

import pytest
import torch

from polymodal.config.schema import ExperimentConfig
from polymodal.models.layers.block import build_transformer
from polymodal.models.meta import MetaModel, WeightedObjectives
from polymodal.models.parts import LinearHead, TransformerTrunk
from polymodal.objectives.lm import NextTokenLoss
from polymodal.objectives.moe import MoEAuxLoss
from polymodal.train.parallel.parallelize import parallelize
from polymodal.train.parallel.plans import transformer_block_plan

MOE = {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0}


pytestmark = pytest.mark.usefixtures("fresh_compiler")


def tiny_moe_model() -> MetaModel:
    torch.manual_seed(0)
    transformer = build_transformer(32, 2, 4, rope=None, multiple_of=16, moe=MOE)
    return MetaModel(
        trunk=TransformerTrunk(transformer, "tokens", "tokens", mask_key=None, position_key=None, cache_key=None),
        head=LinearHead(32, 16, read_key="tokens", write_key="logits"),
    )


def objective() -> WeightedObjectives:
    return WeightedObjectives({"lm": NextTokenLoss(), "moe": MoEAuxLoss(balance_weight=0.1, z_loss_weight=0.01)})


def train_losses(exp: ExperimentConfig) -> list[float]:
    model, train_model = parallelize(tiny_moe_model(), None, exp, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    result = []
    for _ in range(3):
        batch = {"tokens": torch.randn(2, 8, 32, generator=generator), "target_ids": torch.randint(0, 16, (2, 8))}
        loss, _ = objective()(train_model(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        result.append(loss.item())
    return result


def test_moe_block_with_capacity_is_one_graph():
    block = tiny_moe_model().trunk.transformer.blocks[0]
    explained = torch._dynamo.explain(block)(torch.randn(2, 8, 32), None, False, None)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
def test_checkpointed_compiled_moe_blocks_train_like_eager():
    eager = train_losses(ExperimentConfig())
    checkpointed = train_losses(ExperimentConfig(activation_checkpointing=True))
    both = train_losses(ExperimentConfig(activation_checkpointing=True, torch_compile=True))
    assert checkpointed == pytest.approx(eager, rel=1e-6)
    assert both == pytest.approx(eager, rel=1e-5)


def test_tensor_parallel_plan_of_a_moe_block_is_a_clear_error():
    with pytest.raises(ValueError, match="tensor parallelism of mixture-of-experts blocks is not supported"):
        transformer_block_plan(tiny_moe_model().trunk.transformer.blocks[0])
