"""Our LLM and Hugging Face ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` give the same logits both ways.

Tiny random models (built from configs, nothing downloaded), fp32 on CPU: HF's model saved with
``save_pretrained`` -> our weights -> our logits; our model -> an HF directory -> ``from_pretrained`` -> HF's logits;
an imported directory exported again holds the same tensors and config values.
"""

import pytest
import torch

from polymodal.models.hf_directory import read_any_weights, read_hf_directory, write_hf_directory
from polymodal.models.hf_llama import build_from_llama_config, export_llm, llama_config, llm_arguments
from polymodal.models.llm import build_llm

transformers = pytest.importorskip("transformers")

VOCAB = 300
TINY = dict(vocab_size=VOCAB, dim=64, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=64, ffn_dim=96)
KINDS = {
    "llama": dict(qk_norm=False, tie_embeddings=False),
    "llama_tied": dict(qk_norm=False, tie_embeddings=True),
    "qwen3": dict(qk_norm="rmsnorm", tie_embeddings=False),
    "qwen3_tied": dict(qk_norm=True, tie_embeddings=True),
}


def token_batch(batch: int = 2, seq: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))


def our_logits(model, input_ids):
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    batch = {"input_ids": input_ids, "document_ids": torch.zeros_like(input_ids), "position_ids": positions}
    with torch.no_grad():
        return model(batch)["logits"]


def hf_logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def randomised(model):
    """Norm weights start at 1: randomise every tensor so each one matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * (0.3 if "norm" in name else 0.05) + ("norm" in name))
    return model.eval()


def hf_config(kind: str, **overrides):
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=5000.0,
        tie_word_embeddings=KINDS[kind]["tie_embeddings"],
    )  # fmt: skip
    if KINDS[kind]["qk_norm"]:
        return transformers.Qwen3Config(**settings, head_dim=16, **overrides)
    return transformers.LlamaConfig(**settings, **overrides)


@pytest.mark.parametrize("kind", KINDS)
def test_hf_directory_imports_with_hf_logits_and_exports_back_bit_identical(kind, tmp_path):
    hf = randomised(transformers.AutoModelForCausalLM.from_config(hf_config(kind)))
    hf.save_pretrained(tmp_path / "hf")
    input_ids = token_batch()

    config, hf_state = read_hf_directory(tmp_path / "hf")
    model = build_from_llama_config(config).eval()
    model.load_state_dict(read_any_weights(tmp_path / "hf"), strict=True)
    torch.testing.assert_close(our_logits(model, input_ids), hf_logits(hf, input_ids), atol=1e-5, rtol=1e-5)
    assert (model.head.proj.weight is model.preprocessor.blocks[0].embedding.weight) == ("tied" in kind)

    exported_config, exported = export_llm(llm_arguments(config), model.state_dict())
    assert exported.keys() == hf_state.keys()
    assert all(torch.equal(exported[name], hf_state[name]) for name in hf_state)
    assert {name: config[name] for name in exported_config} == exported_config


@pytest.mark.parametrize("kind", KINDS)
def test_our_model_exported_gives_hf_our_logits(kind, tmp_path):
    torch.manual_seed(0)
    model = randomised(build_llm(**TINY, norm_eps=1e-6, rope_theta=5000.0, **KINDS[kind]))
    config, state = export_llm(TINY | {"norm_eps": 1e-6, "rope_theta": 5000.0} | KINDS[kind], model.state_dict())
    write_hf_directory(tmp_path, config, state)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if KINDS[kind]["qk_norm"] else "LlamaForCausalLM")
    input_ids = token_batch()
    torch.testing.assert_close(hf_logits(hf, input_ids), our_logits(model, input_ids), atol=1e-5, rtol=1e-5)


def test_swiglu_width_from_mlp_ratio_is_written():
    arguments = dict(TINY, ffn_dim=None, mlp_ratio=4.0, multiple_of=32)
    assert export_llm(arguments, build_llm(**arguments).state_dict())[0]["intermediate_size"] == 192


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(qk_norm="per_head_layernorm"), "qk_norm='per_head_layernorm'"),
        (dict(qk_norm="rmsnorm", norm_eps=1e-5), "norm_eps=1e-05"),
        (dict(res_post_norm=True), "res_post_norm"),
    ],
)
def test_models_neither_architecture_expresses_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        llama_config(TINY | arguments, intermediate_size=96)


@pytest.mark.parametrize(
    ("kind", "overrides", "message"),
    [
        ("llama", dict(attention_bias=True), "attention_bias"),
        ("llama", dict(mlp_bias=True), "mlp_bias"),
        ("llama", dict(hidden_act="gelu"), "hidden_act"),
        ("llama", dict(head_dim=32), "head_dim"),
        ("qwen3", dict(rms_norm_eps=1e-5), "rms_norm_eps"),
        ("qwen3", dict(use_sliding_window=True, sliding_window=8), "use_sliding_window"),
    ],
)
def test_hf_configs_our_llm_cannot_express_are_refused(kind, overrides, message):
    with pytest.raises(ValueError, match=message):
        llm_arguments(hf_config(kind).to_dict() | overrides)


def test_a_config_of_another_architecture_is_refused():
    with pytest.raises(ValueError, match="'gpt2' is not a Llama or Qwen3 config"):
        llm_arguments(transformers.GPT2Config())
