"""Every configs/fourm main config loads and validates; the 4M pre-training ones build their model on the meta device
(modalities from the data config), their alphas agree with their domains, and their schedules follow 4M's token
arithmetic."""

from pathlib import Path

import pytest
import torch

from polymodal.config import instantiate, load_config
from polymodal.families.fourm.data import fourm_alphas, fourm_registry
from polymodal.families.fourm.model import SIZES, FourM

REPO = Path(__file__).resolve().parents[3]
MAIN_CONFIGS = sorted((REPO / "configs" / "fourm").glob("*.yaml"))
PRETRAINING = ["tiny", "4m-b_mod7", "4m-l_mod7", "4m-xl_mod7", "4m-b_mod21", "4m-l_mod21", "4m-xl_mod21"]
MOD7_TARGETS = {"tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224", "tok_clip@224", "caption", "det"}


def load(name: str):
    return load_config(REPO / "configs" / "fourm" / f"{name}.yaml")


@pytest.mark.parametrize("path", MAIN_CONFIGS, ids=lambda path: path.stem)
def test_every_main_config_loads_and_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path)
    assert cfg.experiment.total_steps > 0 and set(cfg) >= {"model", "data", "optim", "loss"}


def test_the_pretraining_configs_are_the_main_configs():
    assert set(PRETRAINING) <= {path.stem for path in MAIN_CONFIGS}


@pytest.mark.parametrize("name", PRETRAINING)
def test_model_builds_on_meta_from_the_data_domains_and_alphas_agree(name, monkeypatch):
    monkeypatch.chdir(REPO)  # alphas paths are relative to the repository root
    cfg = load(name)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert isinstance(model, FourM)
    data = cfg.data
    registry = fourm_registry(list(data.in_domains), list(data.out_domains), data.modalities)
    assert list(model.encoder_embeddings) == [n for n in registry if registry[n].encoder]
    assert list(model.decoder_embeddings) == sorted(data.out_domains)
    assert (model.num_encoder_tokens, model.num_decoder_tokens) == (data.input_tokens, data.target_tokens)
    mixture = fourm_alphas(data.alphas, registry, list(data.in_domains), list(data.out_domains))
    assert mixture.modalities == tuple(registry)


@pytest.mark.parametrize(
    ("name", "size", "global_batch", "lr"),
    [
        ("4m-b_mod7", "base", 8192, 3.2e-3),
        ("4m-l_mod7", "large", 8192, 3.2e-3),
        ("4m-xl_mod7", "xlarge", 8192, 6.4e-4),
        ("4m-b_mod21", "base", 4096, 1.6e-3),
        ("4m-l_mod21", "large", 4096, 1.6e-3),
        ("4m-xl_mod21", "xlarge", 4096, 3.2e-4),
    ],
)
def test_gpu_configs_follow_4m_token_schedule(name, size, global_batch, lr):
    cfg = load(name)
    exp, constants = cfg.experiment, cfg.constants
    assert cfg.model.size == size and cfg.model.variant == "swiglu_nobias" and size in SIZES
    assert constants.batch_size * constants.gpus == constants.global_batch == global_batch
    assert cfg.optim.optimizer.lr == pytest.approx(lr)  # blr * global batch / 256
    tokens_per_step = global_batch * (cfg.data.input_tokens + cfg.data.target_tokens)
    assert tokens_per_step == 2**21  # both 4M-7 (8192 x 256) and 4M-21 (4096 x 512)
    assert exp.total_steps == 500 * 10**9 // tokens_per_step == 238_418
    assert cfg.optim.schedule.warmup_steps == 10 * 10**9 // tokens_per_step == 4_768
    assert cfg.optim.schedule.min_ratio == 0.0 and cfg.optim.optimizer.weight_decay == 0.05
    assert exp.precision == "bf16" and exp.device == "cuda" and exp.distributed.strategy == "fsdp"
    assert set(cfg.data.out_domains) >= MOD7_TARGETS
    assert len(cfg.data.in_domains) == (19 if "mod21" in name else 8)


def test_gpu_configs_rescale_with_the_number_of_gpus():
    cfg = load_config(REPO / "configs" / "fourm" / "4m-b_mod7.yaml", ["constants.gpus=32"])
    assert cfg.optim.optimizer.lr == pytest.approx(1.6e-3)
    assert cfg.experiment.total_steps == 2 * 238_418 + 1  # the same 500B tokens in half-size steps


def test_data_paths_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FOURM_DATA", "/data/cc12m")
    cfg = load("4m-b_mod7")
    assert cfg.data.train.startswith("/data/cc12m/train/[rgb,")
