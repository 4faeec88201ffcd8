"""``experiment.torch_compile``: each transformer block (the FSDP units) compiled in place, before data parallelism.

A compiled model trains like the eager one: on one process the same losses within 1e-5 relative (fp32; Inductor
fuses the elementwise ops of norms and activations, which moves only the last bits); 2-process FSDP2 with compiled
blocks matches one eager process within the 1e-4 of every parallel layout (``parallel_runs.RTOL``: sharded
reductions change the summation order). The blocks are really compiled (one Dynamo graph each, no graph break) and
the code between them stays eager.
"""

import pytest
import torch
from parallel_runs import assert_losses_match, losses, torchrun
from torch._dynamo.utils import counters

from polymodal.config import load_config
from polymodal.config.schema import ExperimentConfig
from polymodal.models.clip import SelectToken
from polymodal.models.layers.attention import Attention
from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.cross_attention import CrossAttention, CrossAttentionBlock
from polymodal.models.layers.mlp import SwiGLU
from polymodal.models.layers.norm import LayerNorm
from polymodal.models.llm import build_llm
from polymodal.models.meta import MetaModel
from polymodal.models.parts import LinearHead, TransformerTrunk
from polymodal.models.vit import ViTPreprocessor
from polymodal.objectives.classification import ClassificationLoss
from polymodal.objectives.lm import NextTokenLoss
from polymodal.train.parallel.parallelize import parallelize
from polymodal.train.parallel.plans import fsdp_units
from polymodal.train.trainer import Trainer

RTOL = 1e-5
STEPS = 3


pytestmark = pytest.mark.usefixtures("fresh_compiler")


def tiny_llm() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_llm(vocab_size=64, dim=32, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=16, multiple_of=16)


def llm_batches() -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        tokens = torch.randint(0, 64, (2, 17), generator=generator)
        documents = (torch.arange(16) >= 10).long().expand(2, 16)  # two documents per row
        positions = torch.cat([torch.arange(10), torch.arange(6)]).expand(2, 16)
        batches.append(
            {"input_ids": tokens[:, :-1], "target_ids": tokens[:, 1:], "document_ids": documents,
             "position_ids": positions}
        )  # fmt: skip
    return batches


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    transformer = build_transformer(
        32, 2, 4, mlp="gelu", norm="layernorm", qkv_bias=True, out_bias=True, rope=None, drop_path=0.0
    )
    return MetaModel(
        preprocessor=ViTPreprocessor(16, 4, 32, pos_embed="learned", cls_token=True, read_key="rgb"),
        trunk=TransformerTrunk(transformer, read_key="tokens", write_key="tokens", mask_key=None, position_key=None),
        head=[SelectToken(read_key="tokens", write_key="cls"), LinearHead(32, 5, read_key="cls", write_key="logits")],
    )


def vit_batches() -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [
        {"rgb": torch.randn(2, 3, 16, 16, generator=generator), "label": torch.randint(0, 5, (2,), generator=generator)}
        for _ in range(STEPS)
    ]


def train_losses(model: torch.nn.Module, objective, batches: list[dict], compile_blocks: bool) -> list[float]:
    model, train_model = parallelize(model, None, ExperimentConfig(torch_compile=compile_blocks), torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    result = []
    for batch in batches:
        loss, _ = objective(train_model(dict(batch)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        result.append(loss.item())
    return result


@pytest.mark.slow
@pytest.mark.parametrize(
    "build, objective, batches",
    [(tiny_llm, NextTokenLoss(z_loss_weight=1e-4), llm_batches), (tiny_vit, ClassificationLoss(), vit_batches)],
    ids=["llm", "vit"],
)
def test_compiled_blocks_train_like_eager(build, objective, batches):
    eager = train_losses(build(), objective, batches(), compile_blocks=False)
    model = build()
    compiled = train_losses(model, objective, batches(), compile_blocks=True)
    assert compiled == pytest.approx(eager, rel=RTOL)
    blocks = fsdp_units(model)
    assert len(blocks) == 2 and all(block._compiled_call_impl is not None for block in blocks)
    assert model._compiled_call_impl is None  # the code between the blocks stays eager
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])


def block_calls() -> dict[str, tuple]:
    """A block of each kind the families train, with the arguments their trunks pass: the LLM's (RoPE, a document
    mask), Lumina's (per-head QK-norm, res-post-norm), a ViT/AIM/CLIP trunk's (no mask, no RoPE) and 4M's decoder
    block (cross-attention to the encoder output, per-modality self mask, padding cross mask)."""
    torch.manual_seed(0)
    x, context = torch.randn(2, 16, 32), torch.randn(2, 8, 32)
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool).tril()
    positions = llm_batches()[0]["position_ids"]
    lumina = build_transformer(32, 1, 4, qk_norm="per_head_layernorm", res_post_norm=True).blocks[0]
    vit = tiny_vit().trunk.transformer.blocks[0]
    decoder = CrossAttentionBlock(32, Attention(32, 4), CrossAttention(32, 4), SwiGLU(32, 64), norm=LayerNorm)
    cross_mask = torch.ones(2, 1, 16, 8, dtype=torch.bool)
    return {
        "llm": (tiny_llm().trunk.transformer.blocks[0], (x, mask, False, positions)),
        "lumina": (lumina, (x, mask, False, positions)),
        "vit": (vit, (x, None, False, None)),
        "fourm-decoder": (decoder, (x, context, mask, cross_mask)),
    }


@pytest.mark.parametrize("kind", ["llm", "lumina", "vit", "fourm-decoder"])
def test_each_family_block_is_one_graph_without_breaks(kind):
    block, args = block_calls()[kind]
    explained = torch._dynamo.explain(block)(*args)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compile_keeps_parameter_names():
    model = tiny_llm()
    names = list(model.state_dict())
    model, train_model = parallelize(model, None, ExperimentConfig(torch_compile=True), torch.device("cpu"))
    assert train_model is model and list(model.state_dict()) == names


@pytest.mark.slow
def test_fsdp2_with_compiled_blocks_matches_one_eager_process(tmp_path, tiny_config):
    eager = Trainer(load_config(tiny_config, ["experiment.total_steps=4", f"experiment.output_dir={tmp_path}/eager"]))
    eager.fit()
    out = tmp_path / "fsdp-compiled"
    overrides = ["experiment.total_steps=4", "constants.batch_size=2", "experiment.torch_compile=true"]
    torchrun(2, tiny_config, f"experiment.output_dir={out}", *overrides)
    assert_losses_match(losses(out), losses(tmp_path / "eager"), range(1, 5))
