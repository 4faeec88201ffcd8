"""configs/aimv1/600m.yaml builds on the meta device with AIMv1-600M's parameters: its count is upstream's (l3m's
configs/aimv1/001_aim_v1_600M.yaml) term by term, up to the biases upstream drops and the norms of its head blocks'
identity attention; configs/aimv1/tiny.yaml's probes run the encoder bidirectionally."""

import torch

from polymodal.config import instantiate, load_config

DIM, DEPTH, PATCH_PIXELS, HEAD_DIM, HEAD_DEPTH = 1536, 24, 14 * 14 * 3, 2048, 12


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def layernorm(dim: int) -> int:
    return 2 * dim  # weight and bias


def upstream_counts() -> tuple[int, int]:
    """(encoder, head) parameters of the upstream config: bias-free linear layers (use_bias: false), LayerNorms with
    bias, a patch embedding with its bias; each head block keeps the norm of its identity "attention"."""
    patch_embed = PATCH_PIXELS * DIM + DIM + layernorm(DIM)
    block = 4 * DIM * DIM + 8 * DIM * DIM + 2 * layernorm(DIM)  # q, k, v, o; fc1, fc2 (x4); two norms
    encoder = patch_embed + DEPTH * block + layernorm(DIM)
    head_block = 8 * HEAD_DIM * HEAD_DIM + 2 * layernorm(HEAD_DIM)
    head = DIM * HEAD_DIM + HEAD_DEPTH * head_block + layernorm(HEAD_DIM) + HEAD_DIM * PATCH_PIXELS
    return encoder, head


def test_aimv1_600m_builds_on_meta_with_the_papers_parameter_count():
    cfg = load_config("aimv1/600m")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert all(parameter.is_meta for parameter in model.parameters())
    encoder, head = count(model.preprocessor) + count(model.trunk), count(model.head)
    upstream_encoder, upstream_head = upstream_counts()
    assert encoder - upstream_encoder == DEPTH * (4 * DIM + DIM)  # the GELU MLPs' biases
    head_biases = HEAD_DIM + HEAD_DEPTH * (4 * HEAD_DIM + HEAD_DIM) + PATCH_PIXELS
    assert head - upstream_head == head_biases - HEAD_DEPTH * layernorm(HEAD_DIM)  # plain residual MLP blocks
    assert abs((encoder + head) / sum(upstream_counts()) - 1) < 3e-4
    # "AIM-0.6B" / "600M" is a round name: the encoder holds 680.7 M, the head 407.2 M (the header of 600m.yaml)
    assert round(encoder / 1e5) == 6807 and round(head / 1e5) == 4072
    assert cfg.data.batch_transform.num_patches == 256 == (224 // 14) ** 2


def test_tiny_aimv1_probes_read_bidirectional_features():
    cfg = load_config("aimv1/tiny")
    num_patches = (cfg.constants.image_size // cfg.constants.patch_size) ** 2
    assert cfg.data.batch_transform.num_patches == num_patches and cfg.data.eval_batch_transform.length == 1
    assert set(cfg.evaluators) == {"colour_probe", "shape_probe", "count_probe"}
    for probe in cfg.evaluators.values():
        assert probe.batch_transform.length == num_patches  # a prefix of every patch: no causal part
        assert probe.feature_key == "tokens" and probe.val.location.endswith("shard-{00003..00003}.tar")
