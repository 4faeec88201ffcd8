"""``experiment.init_from`` pointing at a Hugging Face directory (``save_pretrained``) continues training from it."""

import pytest
import torch
from omegaconf import OmegaConf

from polymodal.config import load_config
from polymodal.models.hf_directory import read_any_weights
from polymodal.models.hf_llama import export_llm
from polymodal.models.llm import build_llm
from polymodal.train.trainer import Trainer

transformers = pytest.importorskip("transformers")


def test_training_starts_from_a_save_pretrained_llama(tiny_config, tmp_path):
    overrides = [f"experiment.init_from.path={tmp_path}/hf", "experiment.init_from.strict=true"]
    cfg = load_config(tiny_config, overrides)
    arguments = OmegaConf.to_container(cfg.model, resolve=True)
    del arguments["_target_"]
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
