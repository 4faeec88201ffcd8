"""Importing an upstream-named 4M checkpoint reproduces upstream's forward pass exactly.

The reference below is written directly from the upstream-named tensors, following apple/ml-4m's forward (fused
qkv / kv projections, ``-finfo.max`` masking with True = blocked, stable argsort selection, the cumsum-compressed
decoder attention mask with modality separation, the context re-adding the encoder's position+modality emb).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from fourm_test_batches import MODALITY_OVERRIDES, random_batch
from safetensors.torch import save_file

from polymodal.families.fourm.upstream import load_upstream_checkpoint, load_upstream_state_dict

DIM, HEADS, DEPTH, EPS = 32, 4, 2, 1e-6
IMAGE_TOKENS, PATCH, CHANNELS = 16, 8, 3
VOCAB = {"tok_rgb@32": 40, "caption": 50}
CAPTION_MAX = 6
NUM_ENCODER_TOKENS, NUM_DECODER_TOKENS = 40, 24  # below the 46 / 29 positions: padding is cut

VARIANTS = {
    "swiglu_nobias": dict(act_layer="SiLU", gated_mlp=True, norm_bias=False, qkv_bias=False, proj_bias=False,
                          mlp_bias=False, qk_norm=False),
    "gelu": dict(act_layer="GELU", gated_mlp=False, norm_bias=True, qkv_bias=True, proj_bias=True, mlp_bias=True,
                 qk_norm=False),
    "swiglu_qknorm_nobias": dict(act_layer="SiLU", gated_mlp=True, norm_bias=False, qkv_bias=False, proj_bias=False,
                                 mlp_bias=False, qk_norm=True),
}  # fmt: skip


def upstream_config(variant: str) -> dict:
    return dict(
        domains_in=["rgb@32", "tok_rgb@32", "caption"],
        domains_out=["tok_rgb@32", "caption"],
        image_size=32,
        patch_size=PATCH,
        dim=DIM,
        encoder_depth=DEPTH,
        decoder_depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=4.0,
        **VARIANTS[variant],
    )


def sincos_1d_upstream(length: int, dim: int) -> torch.Tensor:
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)[None]


def sincos_2d_upstream(side: int, dim: int) -> torch.Tensor:
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    grid_w, grid_h = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                                    indexing="ij")  # fmt: skip
    out_w, out_h = grid_w.reshape(-1)[:, None] * omega, grid_h.reshape(-1)[:, None] * omega
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


def upstream_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    state: dict[str, torch.Tensor] = {}
    hidden = int(2 * 4 * DIM / 3) if config["gated_mlp"] else 4 * DIM

    def norm(name: str, width: int = DIM) -> None:
        state[f"{name}.weight"] = 1 + rand(width)
        state[f"{name}.bias"] = rand(width) if config["norm_bias"] else torch.zeros(width)

    def linear(name: str, out: int, inp: int, bias: bool) -> None:
        state[f"{name}.weight"] = rand(out, inp, scale=1 / math.sqrt(inp))
        if bias:
            state[f"{name}.bias"] = rand(out)

    def attention(name: str, fused: list[tuple[str, int]]) -> None:
        for part, width in fused:
            linear(f"{name}.{part}", width, DIM, config["qkv_bias"])
        linear(f"{name}.proj", DIM, DIM, config["proj_bias"])
        if config["qk_norm"]:
            norm(f"{name}.q_norm", DIM // HEADS)
            norm(f"{name}.k_norm", DIM // HEADS)

    def mlp(name: str) -> None:
        linear(f"{name}.fc1", hidden, DIM, config["mlp_bias"])
        linear(f"{name}.fc2", DIM, hidden, config["mlp_bias"])
        if config["gated_mlp"]:
            linear(f"{name}.fc3", hidden, DIM, config["mlp_bias"])

    def block(name: str, decoder: bool) -> None:
        norm(f"{name}.norm1")
        attention(f"{name}.self_attn" if decoder else f"{name}.attn", [("qkv", 3 * DIM)])
        if decoder:
            norm(f"{name}.query_norm")
            norm(f"{name}.context_norm")
            attention(f"{name}.cross_attn", [("q", DIM), ("kv", 2 * DIM)])
        norm(f"{name}.norm2")
        mlp(f"{name}.mlp")

    for index in range(DEPTH):
        block(f"encoder.{index}", decoder=False)
    norm("encoder_norm")
    linear("decoder_proj_context", DIM, DIM, True)
    for index in range(DEPTH):
        block(f"decoder.{index}", decoder=True)
    norm("decoder_norm")
    state["mask_token"] = rand(1, 1, DIM)
    image_pos, caption_pos = sincos_2d_upstream(4, DIM), sincos_1d_upstream(512, DIM)  # upstream's 512-row quirk
    encoders = {"rgb@32": image_pos, "tok_rgb@32": image_pos, "caption": caption_pos}
    for name, pos in encoders.items():
        prefix = f"encoder_embeddings.{name}"
        state[f"{prefix}.mod_emb"] = rand(1, 1, DIM)
        state[f"{prefix}.pos_emb"] = pos.clone()
        if name == "rgb@32":
            state[f"{prefix}.proj.weight"] = rand(DIM, CHANNELS * PATCH * PATCH, scale=0.05)
        else:
            state[f"{prefix}.token_emb.weight"] = rand(VOCAB[name], DIM)
    for name in ("tok_rgb@32", "caption"):
        prefix = f"decoder_embeddings.{name}"
        state[f"{prefix}.mod_emb"] = state[f"encoder_embeddings.{name}.mod_emb"].clone()
        state[f"{prefix}.pos_emb"] = encoders[name].clone()
        state[f"{prefix}.token_emb.weight"] = rand(VOCAB[name], DIM)
        state[f"{prefix}.to_logits.weight"] = rand(VOCAB[name], DIM)
    return state


# ---- the reference: upstream's forward, True = blocked / ignored -------------------------------------------------


def layer_norm(sd, name, x):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], EPS)


def linear(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def attend(sd, name, config, q, k, v, blocked):
    batch, q_len, _ = q.shape
    q, k, v = (t.reshape(batch, t.shape[1], HEADS, -1).transpose(1, 2) for t in (q, k, v))
    if config["qk_norm"]:
        q, k = layer_norm(sd, f"{name}.q_norm", q), layer_norm(sd, f"{name}.k_norm", k)
    scores = (q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5
    scores = scores.masked_fill(blocked.unsqueeze(1), -torch.finfo(scores.dtype).max)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, q_len, DIM)
    return linear(sd, f"{name}.proj", out)


def self_attention(sd, name, config, x, blocked):
    q, k, v = linear(sd, f"{name}.qkv", x).chunk(3, dim=-1)
    return attend(sd, name, config, q, k, v, blocked)


def cross_attention(sd, name, config, x, context, blocked):
    k, v = linear(sd, f"{name}.kv", context).chunk(2, dim=-1)
    return attend(sd, name, config, linear(sd, f"{name}.q", x), k, v, blocked)


def mlp(sd, name, config, x):
    if config["gated_mlp"]:
        return linear(sd, f"{name}.fc2", F.silu(linear(sd, f"{name}.fc1", x)) * linear(sd, f"{name}.fc3", x))
    return linear(sd, f"{name}.fc2", F.gelu(linear(sd, f"{name}.fc1", x)))


def gather(t, index):
    return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]) if t.dim() == 3 else index)


def keep_order(mask, budget):
    arange = torch.arange(mask.shape[1])[None] * 1e-6
    return torch.argsort(mask + arange, dim=1)[:, :budget]


def reference_logits(sd, config, batch, decoder_order):
    ids = {"rgb@32": 1, "tok_rgb@32": 2, "caption": 3}
    B = batch["caption"]["tensor"].shape[0]
    xs, es, ms, idx = [], [], [], []
    for name in ("rgb@32", "tok_rgb@32", "caption"):  # the batch order
        d = batch[name]
        input_mask = ~d["is_input"]
        prefix = f"encoder_embeddings.{name}"
        if name == "rgb@32":
            patches = d["tensor"].reshape(B, CHANNELS, 4, PATCH, 4, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(B, 16, -1)
            x, emb = linear(sd, f"{prefix}.proj", patches), (sd[f"{prefix}.pos_emb"] + sd[f"{prefix}.mod_emb"])
        elif name == "tok_rgb@32":
            x, emb = sd[f"{prefix}.token_emb.weight"][d["tensor"]], sd[f"{prefix}.pos_emb"] + sd[f"{prefix}.mod_emb"]
        else:
            x = sd[f"{prefix}.token_emb.weight"][d["tensor"]]
            pos_id = (~input_mask).int().cumsum(1) - 1
            pos_id[input_mask] = 0
            pos = sd[f"{prefix}.pos_emb"][0][pos_id]
            pos[input_mask] = 0
            emb = pos + sd[f"{prefix}.mod_emb"]
        xs.append(x)
        es.append(emb.expand(B, -1, -1))
        ms.append(input_mask)
        idx.append(torch.full_like(input_mask, ids[name], dtype=torch.int16))
    keep = keep_order(torch.cat(ms, 1).float(), NUM_ENCODER_TOKENS)
    X, E, Mk = gather(torch.cat(xs, 1), keep), gather(torch.cat(es, 1), keep), gather(torch.cat(ms, 1), keep)
    X[Mk], E[Mk] = 0.0, 0.0
    enc_mask = Mk[:, None, :]

    ys, eds, mds, ts, dams, idds = [], [], [], [], [], []
    for name in decoder_order:
        d = batch[name]
        target_mask = ~d["is_target"]
        prefix = f"decoder_embeddings.{name}"
        if name == "caption":
            dam = d["is_target"].int()
            pos_id = (~target_mask).int().cumsum(1) - 1
            pos_id[target_mask] = 0
            pos_id[pos_id >= CAPTION_MAX] = 0
            pos = sd[f"{prefix}.pos_emb"][0][pos_id]
            pos[target_mask] = 0
            emb = pos + sd[f"{prefix}.mod_emb"]
            x = sd[f"{prefix}.token_emb.weight"][d["tensor"]]
            ys.append(x[:, :-1])
            ts.append(d["tensor"][:, 1:])
            eds.append(emb[:, :-1])
            mds.append(target_mask[:, 1:] | target_mask[:, :-1])
            dams.append(dam[:, :-1])
        else:
            dam = torch.zeros(B, IMAGE_TOKENS, dtype=torch.int)
            first = torch.argmin(target_mask.float() + torch.arange(IMAGE_TOKENS) * 1e-6, dim=1)
            dam[torch.arange(B), first] = d["is_target"].sum(1).int()
            ys.append(torch.zeros(B, IMAGE_TOKENS, DIM) + sd["mask_token"])
            ts.append(d["tensor"])
            eds.append((sd[f"{prefix}.pos_emb"] + sd[f"{prefix}.mod_emb"]).expand(B, -1, -1))
            mds.append(target_mask)
            dams.append(dam)
        idds.append(torch.full_like(mds[-1], ids[name], dtype=torch.int16))
    keep = keep_order(torch.cat(mds, 1).float(), NUM_DECODER_TOKENS)
    Y, Ed, Md = gather(torch.cat(ys, 1), keep), gather(torch.cat(eds, 1), keep), gather(torch.cat(mds, 1), keep)
    T, Dam, Idd = gather(torch.cat(ts, 1), keep), gather(torch.cat(dams, 1), keep), gather(torch.cat(idds, 1), keep)
    Y[Md], Ed[Md], T[Md] = 0.0, 0.0, 0
    M = Y.shape[1]
    blocked = torch.arange(M)[None, None, :] >= Dam.cumsum(-1)[:, :, None]
    blocked = blocked | (Idd[:, None, :] != Idd[:, :, None])
    Idd[Md] = -1

    x = X + E
    for i in range(DEPTH):
        block = f"encoder.{i}"
        x = x + self_attention(sd, f"{block}.attn", config, layer_norm(sd, f"{block}.norm1", x), enc_mask)
        x = x + mlp(sd, f"{block}.mlp", config, layer_norm(sd, f"{block}.norm2", x))
    x = layer_norm(sd, "encoder_norm", x)
    context = linear(sd, "decoder_proj_context", x) + E
    y = Y + Ed
    for i in range(DEPTH):
        block = f"decoder.{i}"
        y = y + self_attention(sd, f"{block}.self_attn", config, layer_norm(sd, f"{block}.norm1", y), blocked)
        query, ctx = layer_norm(sd, f"{block}.query_norm", y), layer_norm(sd, f"{block}.context_norm", context)
        y = y + cross_attention(sd, f"{block}.cross_attn", config, query, ctx, enc_mask)
        y = y + mlp(sd, f"{block}.mlp", config, layer_norm(sd, f"{block}.norm2", y))
    y = layer_norm(sd, "decoder_norm", y)
    logits = {name: linear(sd, f"decoder_embeddings.{name}.to_logits", y[Idd == ids[name]]) for name in decoder_order}
    targets = {name: T[Idd == ids[name]] for name in decoder_order}
    return logits, targets


def write_checkpoint(path, state, config):
    save_file(state, str(path), metadata={key: str(value) for key, value in config.items()})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_imported_checkpoint_reproduces_upstream_forward(tmp_path, variant):
    config = upstream_config(variant)
    state = upstream_state_dict(config)
    write_checkpoint(tmp_path / "fm.safetensors", state, config)
    model = load_upstream_checkpoint(
        tmp_path / "fm.safetensors",
        MODALITY_OVERRIDES,
        num_encoder_tokens=NUM_ENCODER_TOKENS,
        num_decoder_tokens=NUM_DECODER_TOKENS,
        loss_chunk_size=None,  # forward writes the logits
    )
    model.eval()
    batch = random_batch(model.modalities, batch=4, seed=3)
    with torch.no_grad():
        output = model(dict(batch))
        # upstream shuffles the decoder's modality order; its mask makes the result independent of it
        expected_logits, expected_targets = reference_logits(state, config, batch, ["caption", "tok_rgb@32"])
    assert set(output["logits"]) == {"tok_rgb@32", "caption"}
    for name in expected_logits:
        assert output["logits"][name].shape[0] > 0
        torch.testing.assert_close(output["targets"][name], expected_targets[name])
        torch.testing.assert_close(output["logits"][name], expected_logits[name], atol=1e-5, rtol=1e-5)


@pytest.fixture
def swiglu_model():
    from polymodal.families.fourm.upstream import FourM, fourm_arguments

    return FourM(**fourm_arguments(upstream_config("swiglu_nobias"), MODALITY_OVERRIDES))


def test_unknown_and_missing_keys_are_named(swiglu_model):
    state = upstream_state_dict(upstream_config("swiglu_nobias"))
    state["encoder.0.attn.rel_pos_bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unknown keys.*encoder\.0\.attn\.rel_pos_bias"):
        load_upstream_state_dict(swiglu_model, state)
    state = upstream_state_dict(upstream_config("swiglu_nobias"))
    del state["decoder.1.cross_attn.kv.weight"]
    with pytest.raises(ValueError, match=r"lacks model parameters.*decoder\.blocks\.1\.cross_attn\.k_proj\.weight"):
        load_upstream_state_dict(swiglu_model, state)


def test_shape_mismatch_and_nonzero_missing_bias_are_named(swiglu_model):
    state = upstream_state_dict(upstream_config("swiglu_nobias"))
    state["decoder_embeddings.caption.to_logits.weight"] = torch.zeros(7, DIM)
    with pytest.raises(ValueError, match=r"decoder_embeddings\.caption\.to_logits\.weight: checkpoint \(7, 32\)"):
        load_upstream_state_dict(swiglu_model, state)
    state = upstream_state_dict(upstream_config("swiglu_nobias"))
    state["encoder.1.norm2.bias"] = torch.ones(DIM)  # a real bias the bias-free model cannot hold
    with pytest.raises(ValueError, match=r"no place for.*encoder\.blocks\.1\.mlp_norm\.bias"):
        load_upstream_state_dict(swiglu_model, state)


def test_shared_modality_embedding_loads_from_either_name(swiglu_model):
    state = upstream_state_dict(upstream_config("swiglu_nobias"))
    del state["encoder_embeddings.caption.mod_emb"]  # safetensors' save_model keeps one name of a shared tensor
    load_upstream_state_dict(swiglu_model, state)
    encoder_emb = swiglu_model.encoder_embeddings["caption"].mod_emb
    assert encoder_emb is swiglu_model.decoder_embeddings["caption"].mod_emb
    torch.testing.assert_close(encoder_emb.detach(), state["decoder_embeddings.caption.mod_emb"])
    state["encoder_embeddings.caption.mod_emb"] = state["decoder_embeddings.caption.mod_emb"] + 1
    with pytest.raises(ValueError, match="shared parameter"):
        load_upstream_state_dict(swiglu_model, state)


def test_bad_config_is_named(tmp_path):
    state = upstream_state_dict(upstream_config("swiglu_nobias"))
    config = upstream_config("swiglu_nobias") | {"decoder_causal_mask": True}
    write_checkpoint(tmp_path / "causal.safetensors", state, config)
    with pytest.raises(ValueError, match="decoder_causal_mask=True is not supported"):
        load_upstream_checkpoint(tmp_path / "causal.safetensors", MODALITY_OVERRIDES)
    config = {key: value for key, value in upstream_config("swiglu_nobias").items() if key != "dim"} | {"depth": 3}
    write_checkpoint(tmp_path / "keys.safetensors", state, config)
    with pytest.raises(ValueError, match=r"missing keys \['dim'\], unknown keys \['depth'\]"):
        load_upstream_checkpoint(tmp_path / "keys.safetensors", MODALITY_OVERRIDES)
