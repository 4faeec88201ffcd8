"""Hugging Face Chameleon weights give our model HF's logits, and our weights give HF its own logits back.

Tiny random ``ChameleonForConditionalGeneration`` models (built from a config, nothing downloaded), fp32 on CPU.
HF's forward sets the logits of the image tokens it knows (``vocabulary_map`` names ``IMGIMG*``) to the dtype's
minimum, unconditionally; our model never masks (Lumina-mGPT trains with those logits unmasked), so logits are
compared on the other columns and the masked ones are checked to be what HF makes them.
"""

import inspect
import logging
import subprocess
import sys

import pytest
import torch

from polymodal.config import load_config
from polymodal.families.lumina.hf_chameleon import (
    VQMODEL_PREFIX,
    build_from_chameleon_config,
    chameleon_arguments,
    chameleon_to_polymodal,
    polymodal_to_chameleon,
)
from polymodal.families.lumina.model import build_chameleon

transformers = pytest.importorskip("transformers")

VOCAB = 512
IMAGE_TOKENS = [500, 501, 502]  # ids HF masks; the names are those Chameleon gives its image codes
TINY_VQ = dict(
    embed_dim=4, num_embeddings=8, latent_channels=4, resolution=32, base_channels=32,
    channel_multiplier=[1], num_res_blocks=1,
)  # fmt: skip


def chameleon_config(**overrides):
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=64, vq_config=TINY_VQ,
        vocabulary_map={"<image>": 8, **{f"IMGIMG{chr(65 + i)}Z": token for i, token in enumerate(IMAGE_TOKENS)}},
    )  # fmt: skip
    return transformers.ChameleonConfig(**(settings | overrides))


def random_chameleon(config):
    """HF initialises the QK-norms to 1 / 0 and the RMSNorms to 1: randomise every tensor so each one matters."""
    torch.manual_seed(0)
    model = transformers.ChameleonForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith(VQMODEL_PREFIX):
                parameter.copy_(torch.randn_like(parameter) * (0.3 if "norm" in name else 0.05) + ("norm" in name))
    return model


def token_batch(batch: int = 2, seq: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))


def our_logits(model, input_ids):
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    batch = {"input_ids": input_ids, "document_ids": torch.zeros_like(input_ids), "position_ids": positions}
    return model(batch)["logits"]


def text_columns(logits):
    keep = torch.ones(logits.shape[-1], dtype=torch.bool)
    keep[IMAGE_TOKENS] = False
    return logits[..., keep]


VARIANTS = {
    "gqa": {},
    "mha": dict(num_key_value_heads=4),
    "swin_norm": dict(swin_norm=True, rms_norm_eps=1e-6),
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_imported_weights_reproduce_hf_logits_and_export_back(overrides, caplog):
    config = chameleon_config(**overrides)
    hf = random_chameleon(config)
    input_ids = token_batch()
    with torch.no_grad():
        expected = hf(input_ids=input_ids).logits

    with caplog.at_level(logging.INFO, logger="polymodal.families.lumina.hf_chameleon"):
        ours = chameleon_to_polymodal(hf.state_dict(), config)
    assert [record.levelno for record in caplog.records] == [logging.INFO]
    assert "VQ-VAE" in caplog.records[0].getMessage()
    model = build_from_chameleon_config(config).eval()
    model.load_state_dict(ours, strict=True)
    with torch.no_grad():
        got = our_logits(model, input_ids)
    torch.testing.assert_close(text_columns(got), text_columns(expected), atol=1e-5, rtol=1e-5)
    assert (expected[..., IMAGE_TOKENS] == torch.finfo(expected.dtype).min).all()  # HF's masking, not ours

    blocks = model.trunk.transformer.blocks
    assert blocks[0].attn.q_norm.weight.shape == (4, 16)
    assert blocks[0].attn.k_norm.bias.shape == (config.num_key_value_heads, 16)
    assert blocks[0].res_post_norm == bool(overrides.get("swin_norm"))

    vqmodel = {name: tensor for name, tensor in hf.state_dict().items() if name.startswith(VQMODEL_PREFIX)}
    back = polymodal_to_chameleon(model.state_dict(), config, vqmodel=vqmodel)
    fresh = transformers.ChameleonForConditionalGeneration(config).eval()
    fresh.load_state_dict(back, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=input_ids).logits, expected, atol=0, rtol=0)


def test_config_dict_and_object_give_the_same_model_arguments():
    config = chameleon_config(swin_norm=True)
    arguments = chameleon_arguments(config)
    assert arguments == chameleon_arguments(config.to_dict())
    assert arguments | {"swin_norm": False} == dict(
        vocab_size=VOCAB, dim=64, depth=2, num_heads=4, num_kv_heads=2, ffn_dim=128, max_seq_len=64,
        rope_theta=10000.0, norm_eps=1e-5, swin_norm=False, residual_dropout=0.0,
    )  # fmt: skip
    assert chameleon_arguments(config.to_dict() | {"dropout": 0.05})["residual_dropout"] == 0.05  # Lumina's key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attention_bias=True), "attention_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings"),
    ],
)
def test_settings_the_model_cannot_express_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        chameleon_arguments(chameleon_config().to_dict() | overrides)


def test_wrong_keys_and_shapes_are_named():
    config = chameleon_config()
    state = random_chameleon(config).state_dict()
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        chameleon_to_polymodal({k: v for k, v in state.items() if k != "lm_head.weight"}, config)
    with pytest.raises(ValueError, match="unexpected.*model.extra"):
        chameleon_to_polymodal(state | {"model.extra": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="model.layers.9"):  # a deeper checkpoint than its config says
        chameleon_to_polymodal(state | {"model.layers.9.mlp.up_proj.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="head.proj.weight"):
        chameleon_to_polymodal(state | {"lm_head.weight": torch.zeros(VOCAB, 32)}, config)
    ours = chameleon_to_polymodal(state, config)
    with pytest.raises(ValueError, match="outside"):
        polymodal_to_chameleon(ours, config, vqmodel={"lm_head.weight": torch.zeros(1)})


def test_configs_lumina_7b_is_hf_default_chameleon():
    """transformers' default ChameleonConfig is Chameleon-7B: configs/lumina/7b.yaml must build the same model."""
    part = {key: value for key, value in load_config("lumina/7b").model.items()}
    arguments = inspect.signature(build_chameleon).bind(**{k: v for k, v in part.items() if k != "_target_"})
    arguments.apply_defaults()
    expected = chameleon_arguments(transformers.ChameleonConfig())
    assert {key: arguments.arguments[key] for key in expected} == expected | {"residual_dropout": 0.05}  # Lumina's


def test_building_the_model_registers_its_hf_format():
    """``init_from`` and ``export --format hf`` find Chameleon once the family's model module is imported (which
    building the model does), without the engine importing the family."""
    script = (
        "from polymodal.models.hf_directory import HF_EXPORTERS, HF_IMPORTERS\n"
        "assert 'chameleon' not in HF_IMPORTERS\n"
        "import polymodal.families.lumina.model\n"
        "assert HF_IMPORTERS['chameleon'].endswith('hf_chameleon:chameleon_to_polymodal')\n"
        "assert HF_EXPORTERS['polymodal.families.lumina.model.build_chameleon'].endswith(':export_chameleon')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
