"""``polymodal export --format hf``: a directory ``transformers`` loads, with our logits and our tokenizer's ids.

Exports of tiny random models (fp32, CPU) with a carried text tokenizer: the LLM as ``LlamaForCausalLM`` /
``Qwen3ForCausalLM``, the Lumina family's model as ``ChameleonForConditionalGeneration`` (whose directory, saved
again by ``transformers``, imports back to the same tensors and config values).
"""

import json

import pytest
import torch
from omegaconf import OmegaConf

from polymodal.checkpoint.weights import export_weights
from polymodal.cli import main
from polymodal.config import instantiate
from polymodal.families.lumina.hf_chameleon import chameleon_arguments, export_chameleon
from polymodal.models.hf_directory import read_any_weights, read_hf_directory
from polymodal.tokenizers.carried import TOKENIZERS_DIR
from polymodal.tokenizers.text.bpe import save_tokenizer, train_bpe

transformers = pytest.importorskip("transformers")

VOCAB = 600
SHAPE = dict(vocab_size=VOCAB, dim=64, depth=2, num_heads=4, num_kv_heads=2, max_seq_len=64, ffn_dim=96)
TEXTS = ["the red cube is left of the blue sphere.", "a green <|eos|> cone", "Ünïcode and   spaces\n"]


def saved_model(directory, builder: str, **arguments):
    """An export of a ``builder`` model with random weights (every norm too) and a carried text tokenizer."""

    config_yaml = "model:\n" + "".join(
        f"  {k}: {json.dumps(v)}\n" for k, v in {"_target_": builder, **arguments}.items()
    )

    torch.manual_seed(0)
    model = instantiate(OmegaConf.create(config_yaml).model).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * (0.3 if "norm" in name else 0.05) + ("norm" in name))
    export_weights(model, directory, config_yaml)
    tokenizer = train_bpe(TEXTS * 20, vocab_size=VOCAB, min_frequency=1)
    save_tokenizer(tokenizer, directory / TOKENIZERS_DIR / "text.json")
    return model, tokenizer


def export_hf(tmp_path) -> int:
    return main(["export", "--checkpoint", str(tmp_path / "export"), "--out", str(tmp_path / "hf"), "--format", "hf"])


def our_logits(model, input_ids):
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    batch = {"input_ids": input_ids, "document_ids": torch.zeros_like(input_ids), "position_ids": positions}
    with torch.no_grad():
        return model(batch)["logits"]


def token_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("qk_norm", "architecture"), [(False, "LlamaForCausalLM"), ("rmsnorm", "Qwen3ForCausalLM")])
def test_the_llm_exports_as_a_transformers_model_with_its_tokenizer(qk_norm, architecture, tmp_path):
    model, tokenizer = saved_model(tmp_path / "export", "polymodal.models.llm.build_llm", **SHAPE, qk_norm=qk_norm)
    out = tmp_path / "hf"
    assert export_hf(tmp_path) == 0

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == architecture
    input_ids = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=input_ids).logits, our_logits(model, input_ids), atol=1e-5, rtol=1e-5)

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids, text
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (1, 2, 0)
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (1, 2, 0)
    assert hf.generation_config.eos_token_id == 2  # generate stops at <|eos|>
    assert hf_tokenizer.decode(tokenizer.encode(TEXTS[0]).ids) == TEXTS[0]


def test_the_lumina_model_exports_as_chameleon_and_imports_back_bit_identical(tmp_path):
    model, tokenizer = saved_model(tmp_path / "export", "polymodal.families.lumina.model.build_chameleon", **SHAPE)
    out = tmp_path / "hf"
    assert export_hf(tmp_path) == 0

    hf = transformers.ChameleonForConditionalGeneration.from_pretrained(out).eval()  # a random VQ-VAE: not ours
    input_ids = token_batch()
    with torch.no_grad():  # no logits masked: the vocabulary names no image code
        torch.testing.assert_close(hf(input_ids=input_ids).logits, our_logits(model, input_ids), atol=1e-5, rtol=1e-5)
    assert hf.config.vocabulary_map == tokenizer.get_vocab()

    hf.save_pretrained(tmp_path / "again")
    config, hf_state = read_hf_directory(tmp_path / "again")
    imported = read_any_weights(tmp_path / "again")
    assert all(torch.equal(imported[name], tensor) for name, tensor in model.state_dict().items())
    carried = tmp_path / "export" / TOKENIZERS_DIR / "text.json"
    exported_config, exported = export_chameleon(chameleon_arguments(config), imported, carried)
    assert all(torch.equal(exported[name], hf_state[name]) for name in exported)
    assert set(hf_state) - set(exported) == {name for name in hf_state if name.startswith("model.vqmodel.")}
    assert {name: config[name] for name in exported_config} == exported_config | {
        "vocabulary_map": config["vocabulary_map"]
    }


@pytest.mark.parametrize(
    ("builder", "arguments", "message"),
    [
        ("polymodal.models.llm.build_llm", dict(SHAPE, res_post_norm=True), "res_post_norm"),
        ("polymodal.models.llm.build_llm", dict(SHAPE, qk_norm="per_head_layernorm"), "qk_norm='per_head_layernorm'"),
        ("polymodal.families.lumina.model.build_chameleon", dict(SHAPE, qk_norm="rmsnorm"), "LayerNorm per head"),
        ("polymodal.models.layers.norm.RMSNorm", dict(dim=8), "models built by polymodal.models.layers.norm.RMSNorm"),
    ],
)
def test_models_without_a_hf_form_are_refused_in_one_line(builder, arguments, message, tmp_path, capsys):
    saved_model(tmp_path / "export", builder, **arguments)
    assert (
        main(["export", "--checkpoint", str(tmp_path / "export"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("error: --format hf:") and error.count("\n") == 1 and message in error
    assert not (tmp_path / "hf").exists()
