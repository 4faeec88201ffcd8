"""The parallel plans really apply (sharded DTensors, split sequences) and compute what one process computes.

Each test spawns real processes on gloo and compares against a plain single-process computation.
"""

import pytest
import torch
import torch.distributed as dist
from parallel_runs import spawn_gloo
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Replicate, Shard

from polymodal.config.schema import DistributedConfig, ExperimentConfig
from polymodal.distributed.collectives import all_gather_with_grad
from polymodal.distributed.env import gradient_sync
from polymodal.models.layers.attention import masked_attention
from polymodal.models.layers.mask_rules import CausalMask, DocumentCausalRule, flex_block_mask
from polymodal.models.layers.masks import causal_mask
from polymodal.models.llm import build_llm
from polymodal.objectives.lm import NextTokenLoss
from polymodal.train.optim import freeze_parameters
from polymodal.train.parallel.mesh import Mesh, ParallelDims
from polymodal.train.parallel.parallelize import parallelize
from polymodal.train.parallel.plans import ContextParallelAttention, head_writes_logits, plan_for, split_sequence


def tiny_llm(**overrides):
    settings = dict(vocab_size=64, dim=32, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=16, multiple_of=16)
    torch.manual_seed(0)
    return build_llm(**(settings | overrides))


def lm_batch(batch: int = 2, seq: int = 16, one_document: bool = False) -> dict:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (batch, seq + 1), generator=generator)
    documents = (torch.arange(seq) >= seq // 2).long().expand(batch, seq)  # two documents per row
    if one_document:
        documents = torch.zeros_like(documents)
    positions = torch.arange(seq) - (seq // 2) * documents[0]
    return {
        "input_ids": tokens[:, :-1],
        "target_ids": tokens[:, 1:],
        "document_ids": documents.clone(),
        "position_ids": positions.expand(batch, seq).clone(),
    }


def loss_of(model, batch) -> torch.Tensor:
    """The mean cross-entropy: from the head's chunked loss, or from the logits a tensor-parallel head writes."""
    return NextTokenLoss()(model(dict(batch)))[0]


def experiment(**distributed) -> ExperimentConfig:
    return ExperimentConfig(distributed=DistributedConfig(**distributed))


def parallel_model(world: int, **distributed):
    exp = experiment(**distributed)
    mesh = Mesh.build(ParallelDims.from_config(exp.distributed, world), "cpu")
    model, _ = parallelize(tiny_llm(), mesh, exp, torch.device("cpu"))
    return model, mesh


def tensor_parallel_worker(rank, world):
    model, _ = parallel_model(world, tp=2)
    q_proj = model.trunk.transformer.blocks[0].attn.q_proj.weight
    o_proj = model.trunk.transformer.blocks[0].attn.o_proj.weight
    loss = loss_of(model, lm_batch())
    loss.backward()
    grad = model.trunk.transformer.blocks[1].mlp.fc2.weight.grad.full_tensor()
    return {
        "q_placements": [str(p) for p in q_proj.placements] if isinstance(q_proj, DTensor) else None,
        "q_local": tuple(q_proj.to_local().shape),
        "o_placements": [str(p) for p in o_proj.placements],
        "tied": model.head.proj.weight is model.preprocessor.blocks[0].embedding.weight,
        "head_loss_chunk_size": model.head.loss_chunk_size,
        "loss": loss.item(),
        "grad": grad,
    }


def test_tensor_parallel_plan_shards_weights_and_matches_one_process():
    results = spawn_gloo(tensor_parallel_worker, 2)
    reference = tiny_llm()
    loss = loss_of(reference, lm_batch())
    loss.backward()
    for rank in range(2):
        got = results[rank]
        assert got["q_placements"] == [str(Shard(0))], "q_proj was not column-sharded"
        assert got["q_local"] == (16, 32)  # 32 output features split over 2 ranks
        assert got["o_placements"] == [str(Shard(1))]
        assert got["head_loss_chunk_size"] is None, "a column-parallel head must write logits"
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(got["grad"], reference.trunk.transformer.blocks[1].mlp.fc2.weight.grad)
    tied = tiny_llm(tie_embeddings=True)
    assert tied.head.proj.weight is tied.preprocessor.blocks[0].embedding.weight


def test_a_tensor_parallel_head_writes_logits_and_says_why(caplog):
    model = tiny_llm()
    with caplog.at_level("INFO", logger="polymodal"):
        head_writes_logits(model)
    assert model.head.loss_chunk_size is None
    assert "head writes logits" in caplog.text and "sharded over the vocabulary" in caplog.text


def randomised_norms(model):
    """Norms start at weight 1 / bias 0, where sharding them wrongly would go unnoticed: give them values."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


QK_NORM_LAYOUTS = {
    "shared-rmsnorm": dict(qk_norm="rmsnorm"),
    "per-head-layernorm-swin": dict(qk_norm="per_head_layernorm", res_post_norm=True),
}


def qk_norm_tensor_parallel_worker(rank, world, settings):
    exp = experiment(tp=2)
    mesh = Mesh.build(ParallelDims.from_config(exp.distributed, world), "cpu")
    model, _ = parallelize(randomised_norms(tiny_llm(**settings)), mesh, exp, torch.device("cpu"))
    loss = loss_of(model, lm_batch())
    loss.backward()
    q_norm = model.trunk.transformer.blocks[0].attn.q_norm.weight
    return {
        "q_norm": ([str(p) for p in q_norm.placements], tuple(q_norm.to_local().shape)),
        "loss": loss.item(),
        "grads": {name: p.grad.full_tensor() for name, p in model.named_parameters()},
    }


@pytest.mark.parametrize("settings", QK_NORM_LAYOUTS.values(), ids=QK_NORM_LAYOUTS.keys())
def test_tensor_parallel_with_qk_norm_matches_one_process(settings):
    """A shared QK-norm is replicated (its gradient summed over the ranks' heads), a per-head one sharded with the
    heads; both in pre-norm and Chameleon's res-post-norm ("swin norm") block order."""
    results = spawn_gloo(qk_norm_tensor_parallel_worker, 2, settings)
    reference = randomised_norms(tiny_llm(**settings))
    loss = loss_of(reference, lm_batch())
    loss.backward()
    per_head = settings["qk_norm"] == "per_head_layernorm"
    q_norm = ([str(Shard(0))], (2, 8)) if per_head else ([str(Replicate())], (8,))  # 4 heads of 8 dims, tp=2
    for rank in range(2):
        got = results[rank]
        assert got["q_norm"] == q_norm
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
        for name, parameter in reference.named_parameters():
            torch.testing.assert_close(got["grads"][name], parameter.grad, msg=name)


def frozen_tensor_parallel_worker(rank, world):
    exp = experiment(tp=2)
    mesh = Mesh.build(ParallelDims.from_config(exp.distributed, world), "cpu")
    model = tiny_llm(qk_norm="per_head_layernorm")
    freeze_parameters(model, ["trunk.transformer.blocks.0.*"])
    model, _ = parallelize(model, mesh, exp, torch.device("cpu"))
    return {name: (isinstance(p, DTensor), p.requires_grad) for name, p in model.named_parameters()}


def test_tensor_parallel_keeps_frozen_parameters_frozen():
    """A parameter frozen before tensor parallelism stays frozen, whatever style replaced it by a DTensor (torch's
    SequenceParallel norms and our per-head norms included)."""
    got = spawn_gloo(frozen_tensor_parallel_worker, 2)[0]
    assert got["trunk.transformer.blocks.0.attn.q_norm.weight"] == (True, False)
    for name, (is_dtensor, requires_grad) in got.items():
        assert is_dtensor and requires_grad == (not name.startswith("trunk.transformer.blocks.0.")), name


def context_parallel_worker(rank, world, one_document):
    model, mesh = parallel_model(world, cp=2)
    kernels = {type(m.kernel).__name__ for m in model.modules() if hasattr(m, "kernel")}
    batch = split_sequence(lm_batch(one_document=one_document), plan_for(model).sequence_keys, mesh.cp_rank, 2)
    with torch.no_grad():
        sums = model(dict(batch))["token_loss"]
        logits = model(without_targets(batch))["logits"]
    return {"kernels": kernels, "logits": logits, "seq": batch["input_ids"].shape[1], "sums": sums}


def without_targets(batch: dict) -> dict:
    """Given no targets the head writes logits."""
    return {key: value for key, value in batch.items() if key != "target_ids"}


@pytest.mark.parametrize("one_document", [False, True], ids=["document-mask", "causal-mask"])
def test_context_parallel_splits_the_sequence_and_matches_one_process(one_document):
    results = spawn_gloo(context_parallel_worker, 2, one_document)
    with torch.no_grad():
        full = tiny_llm()(without_targets(lm_batch(one_document=one_document)))["logits"]
        sums = tiny_llm()(lm_batch(one_document=one_document))["token_loss"]
    assert results[0]["kernels"] == {ContextParallelAttention.__name__}
    assert results[0]["seq"] == 8
    torch.testing.assert_close(torch.cat([results[0]["logits"], results[1]["logits"]], dim=1), full)
    for name, total in sums._asdict().items():  # each rank's head sums its own positions
        torch.testing.assert_close(sum(getattr(results[rank]["sums"], name) for rank in range(2)), total, msg=name)


def attention_inputs() -> tuple[torch.Tensor, ...]:
    """Queries (4 heads), keys and values (2 heads: GQA) of a 12-token sequence, and weights of a loss on the output."""
    generator = torch.Generator().manual_seed(5)
    shapes = [(2, 4, 12, 8), (2, 2, 12, 8), (2, 2, 12, 8), (2, 4, 12, 8)]
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def causal_context_parallel_worker(rank, world):
    *full, weights = attention_inputs()
    rows = slice(rank * 12 // world, (rank + 1) * 12 // world)
    local = [tensor[:, :, rows].clone().requires_grad_() for tensor in full]
    kernel = ContextParallelAttention(dist.group.WORLD)
    out = kernel(*local, CausalMask(), False, 0.0)
    (out * weights[:, :, rows]).sum().backward()
    block_mask = flex_block_mask(DocumentCausalRule(torch.zeros(2, 12, dtype=torch.long)))
    with pytest.raises(ValueError, match="attention='sdpa'"):
        kernel(*local, block_mask, False, 0.0)
    return {"out": out.detach(), "grads": [tensor.grad for tensor in local]}


def test_context_parallel_kernel_attends_causally_from_each_ranks_offset():
    """Outputs and gradients of a CausalMask split over 2 ranks against the dense causal mask on one process; a
    FlexAttention block mask is refused."""
    results = spawn_gloo(causal_context_parallel_worker, 2)
    *full, weights = attention_inputs()
    full = [tensor.requires_grad_() for tensor in full]
    out = masked_attention(*full, causal_mask(12)[None, None])
    (out * weights).sum().backward()
    torch.testing.assert_close(torch.cat([results[rank]["out"] for rank in range(2)], dim=2), out.detach())
    for index, tensor in enumerate(full):
        got = torch.cat([results[rank]["grads"][index] for rank in range(2)], dim=2)
        torch.testing.assert_close(got, tensor.grad, msg=f"gradient of input {index}")


def hsdp_worker(rank, world):
    model, _ = parallel_model(world, strategy="hsdp", dp_replicate=2)
    weight = model.trunk.transformer.blocks[0].mlp.fc1.weight
    return {"placements": [str(p) for p in weight.placements], "mesh": tuple(weight.device_mesh.shape)}


def test_hsdp_shards_within_and_replicates_across_groups():
    results = spawn_gloo(hsdp_worker, 4)
    assert results[3]["placements"] == [str(Replicate()), str(Shard(0))] and results[3]["mesh"] == (2, 2)


def meta_init_worker(rank, world):
    exp = experiment(meta_init=True)
    mesh = Mesh.build(ParallelDims.from_config(exp.distributed, world), "cpu")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = tiny_llm()
    model, _ = parallelize(model, mesh, exp, torch.device("cpu"))
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.initialize_weights()
    full = {name: p.full_tensor() for name, p in model.named_parameters()}
    return {"checksums": {n: float(t.double().sum()) for n, t in full.items()}, "q_std": float(full[
        "trunk.transformer.blocks.0.attn.q_proj.weight"].std())}  # fmt: skip


def test_meta_device_build_initialises_identically_on_every_rank():
    results = spawn_gloo(meta_init_worker, 2)
    assert results[0]["checksums"] == results[1]["checksums"]
    assert 0.01 < results[0]["q_std"] < 0.03  # trunc-normal(0.02), not the garbage of uninitialised memory


def fsdp_accumulation_worker(rank, world):
    model, _ = parallel_model(world)
    assert isinstance(model, FSDPModule)
    batches = [lm_batch(batch=1) for _ in range(2)]
    batches[1]["input_ids"] = batches[1]["input_ids"].flip(1)
    with gradient_sync(model, enabled=False):
        (loss_of(model, batches[0]) / 2).backward()
    reduced_early = any(p.grad is not None for p in model.parameters())
    with gradient_sync(model, enabled=True):
        (loss_of(model, batches[1]) / 2).backward()
    return {"reduced_early": reduced_early, "grad": model.head.proj.weight.grad.full_tensor()}


def test_fsdp_accumulation_reduces_gradients_once_at_the_final_micro_step():
    results = spawn_gloo(fsdp_accumulation_worker, 2)
    reference = tiny_llm()
    batches = [lm_batch(batch=1) for _ in range(2)]
    batches[1]["input_ids"] = batches[1]["input_ids"].flip(1)
    for batch in batches:
        (loss_of(reference, batch) / 2).backward()
    for rank in range(2):
        assert not results[rank]["reduced_early"], "FSDP reduce-scattered on a non-final micro-step"
        torch.testing.assert_close(results[rank]["grad"], reference.head.proj.weight.grad)


def gather_worker(rank, world):
    features = torch.randn(3, 4, generator=torch.Generator().manual_seed(rank), requires_grad=True)
    everyone = all_gather_with_grad(features, dim=0)
    logits = features @ everyone.T  # each rank's rows against every rank's columns: a contrastive-style loss
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(3) + 3 * rank)
    loss.backward()
    return {"grad": features.grad, "gathered": everyone.detach()}


def test_gather_with_gradient_matches_a_single_process_reference():
    results = spawn_gloo(gather_worker, 2)
    features = [torch.randn(3, 4, generator=torch.Generator().manual_seed(r), requires_grad=True) for r in range(2)]
    everyone = torch.cat(features)
    total = sum(torch.nn.functional.cross_entropy(features[r] @ everyone.T, torch.arange(3) + 3 * r) for r in range(2))
    total.backward()
    for rank in range(2):
        torch.testing.assert_close(results[rank]["gathered"], everyone.detach())
        torch.testing.assert_close(results[rank]["grad"], features[rank].grad)


@pytest.mark.parametrize(
    ("settings", "world", "message"),
    [
        (dict(tp=3), 4, "does not divide the world size 4"),
        (dict(dp_shard=3), 4, "= 3, but the world size is 4"),
        (dict(strategy="hsdp"), 4, "needs dp_replicate > 1"),
        (dict(strategy="ddp", tp=2), 4, "needs strategy fsdp or hsdp"),
        (dict(dp_replicate=2), 4, "needs strategy hsdp"),
    ],
)
def test_impossible_meshes_are_clear_errors(settings, world, message):
    with pytest.raises(ValueError, match=message):
        ParallelDims.from_config(DistributedConfig(**settings), world)


def test_default_mesh_shards_every_rank():
    dims = ParallelDims.from_config(DistributedConfig(tp=2), 8)
    assert (dims.dp_replicate, dims.dp_shard, dims.cp, dims.tp) == (1, 4, 1, 2)


def quiet_mesh_worker(rank, world):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = experiment(strategy="hsdp", dp_replicate=2, dp_shard=1)
        mesh = Mesh.build(ParallelDims.from_config(exp.distributed, world), "cpu")
        views = {name: mesh[name].size() for name in ("dp", "dp_shard_cp", "dp_cp")}
        views["hsdp"] = mesh[("dp_replicate", "dp_shard_cp")].size()
        ranks = (mesh.dp_rank, mesh.cp_rank, dist.get_world_size(mesh.group("dp_cp")))
    return {"views": views, "ranks": ranks, "warnings": [str(w.message) for w in caught]}


def test_mesh_views_come_without_deprecation_warnings():
    results = spawn_gloo(quiet_mesh_worker, 2)
    for rank, result in results.items():
        assert result["views"] == {"dp": 2, "dp_shard_cp": 1, "dp_cp": 2, "hsdp": 2}
        assert result["ranks"] == (rank, 0, 2)
        assert not [message for message in result["warnings"] if "deprecat" in message], result["warnings"]
