"""``experiment.init_from`` pointing at a Hugging Face directory (``save_pretrained``) continues training from it."""

import pytest
import torch
from omegaconf import OmegaConf

from polymodal.config import ConfigError, load_config
from polymodal.models.hf_directory import read_any_weights
from polymodal.models.hf_llama import export_llm
from polymodal.models.llm import build_llm
from polymodal.train.trainer import Trainer

transformers = pytest.importorskip("transformers")


def model_arguments(cfg) -> dict:
    arguments = OmegaConf.to_container(cfg.model, resolve=True)
    del arguments["_target_"]
    return arguments


def test_training_starts_from_a_save_pretrained_llama(tiny_config, tmp_path):
    overrides = [f"experiment.init_from.path={tmp_path}/hf", "experiment.init_from.strict=true"]
    arguments = model_arguments(load_config(tiny_config, overrides))
    hf_config, _ = export_llm(arguments, build_llm(**arguments).state_dict())
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config))
    with torch.no_grad():
        for parameter in hf.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    imported = read_any_weights(tmp_path / "hf")

    trainer = Trainer(load_config(tiny_config, [*overrides, f"experiment.output_dir={tmp_path}/run"]))
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, imported[name]), name

    reference = build_llm(**arguments)
    reference.load_state_dict(imported, strict=True)
    same_data = Trainer(load_config(tiny_config, [*overrides, f"experiment.output_dir={tmp_path}/other"]))
    batch = next(same_data.data.train)
    expected, _ = trainer.objective(reference(dict(batch)))

    first = trainer.train_step()
    torch.testing.assert_close(first["loss"], expected, atol=1e-6, rtol=1e-6)
    embedding = "preprocessor.blocks.0.embedding.weight"
    assert not torch.equal(trainer.model.state_dict()[embedding], imported[embedding])  # it trained on


def test_a_hf_directory_the_model_cannot_express_is_one_config_error(tiny_config, tmp_path):
    arguments = model_arguments(load_config(tiny_config))
    hf_config, _ = export_llm(arguments, build_llm(**arguments).state_dict())
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config | {"attention_bias": True})).save_pretrained(
        tmp_path / "hf"
    )
    overrides = [f"experiment.init_from.path={tmp_path}/hf", f"experiment.output_dir={tmp_path}/run"]
    with pytest.raises(ConfigError, match=r"experiment.init_from: llama config settings .*'attention_bias': True"):
        Trainer(load_config(tiny_config, overrides))
