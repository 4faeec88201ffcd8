"""Hugging Face model directories: sharded weights read like single files, unknown or weightless ones named."""

import json

import pytest
import torch

from polymodal.checkpoint.weights import export_weights
from polymodal.models.hf_directory import HF_WEIGHTS_INDEX, is_hf_directory, read_any_weights, read_hf_weights
from polymodal.models.llm import build_llm

transformers = pytest.importorskip("transformers")

CONFIG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def test_sharded_weights_read_like_one_file(tmp_path):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    shards = set(json.loads((tmp_path / "shards" / HF_WEIGHTS_INDEX).read_text())["weight_map"].values())
    assert len(shards) > 1
    one, sharded = read_hf_weights(tmp_path / "one"), read_hf_weights(tmp_path / "shards")
    assert one.keys() == sharded.keys() and all(torch.equal(one[name], sharded[name]) for name in one)


def test_our_exports_are_read_as_they_are(tmp_path):
    model = build_llm(vocab_size=64, dim=32, depth=1, num_heads=4)
    export_weights(model, tmp_path, "model: {}\n")
    assert not is_hf_directory(tmp_path)
    weights = read_any_weights(tmp_path)
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())


def test_a_model_type_without_an_importer_is_named(tmp_path):
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no importer for model_type 'gpt2'"):
        read_any_weights(tmp_path)


def test_a_directory_without_safetensors_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **CONFIG}))
    with pytest.raises(FileNotFoundError, match="only safetensors weights load"):
        read_any_weights(tmp_path)
