import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from polymodal.checkpoint.weights import (
    build_seeded_model,
    export_weights,
    load_pretrained,
    materialise_model,
    tensor_aliases,
)
from polymodal.config import ConfigError


class TiedModel(nn.Module):
    """An embedding tied to its head, and one parameter shared by two submodules (as FourM's mod_emb)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight
        self.encoder = nn.ParameterDict({"mod_emb": nn.Parameter(torch.randn(1, 4))})
        self.decoder = nn.ParameterDict({"mod_emb": self.encoder["mod_emb"]})


def test_aliases_group_the_keys_of_one_tensor():
    aliases = tensor_aliases(TiedModel())
    assert aliases["head.weight"] == {"embed.weight", "head.weight"}
    assert aliases["decoder.mod_emb"] == {"encoder.mod_emb", "decoder.mod_emb"}


def test_export_then_strict_load_restores_tied_weights(tmp_path):
    source = TiedModel()
    export_weights(source, tmp_path, "model: {}\n")
    target = TiedModel()
    missing, unexpected = load_pretrained(target, tmp_path, strict=True)
    assert missing == [] and unexpected == []
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
    assert target.head.weight is target.embed.weight


def test_strict_load_still_fails_on_really_missing_keys(tmp_path):
    export_weights(TiedModel(), tmp_path, "model: {}\n")
    with pytest.raises(RuntimeError, match="missing"):
        load_pretrained(TiedModel(), tmp_path, exclude=["encoder.*", "decoder.*"], strict=True)


def test_exports_are_readable_like_any_written_file(tmp_path):
    import os
    import stat

    from torch import nn

    from polymodal.checkpoint.weights import export_weights

    umask = os.umask(0o022)
    try:
        export_weights(nn.Linear(2, 2), tmp_path / "export", "a: 1\n")
    finally:
        os.umask(umask)
    for name in ("model.safetensors", "config.yaml"):
        assert stat.S_IMODE((tmp_path / "export" / name).stat().st_mode) == 0o644, name


EXPORT_IN_A_FRESH_PROCESS = """
import sys, torch
from torch import nn
from polymodal.checkpoint.weights import export_weights
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
for attempt in range(4):  # the metadata order varied from one write to the next, in one process too
    export_weights(model, f"{sys.argv[1]}-{attempt}", "a: 1\\n")
"""


def test_the_same_weights_export_to_the_same_bytes_in_separate_processes(tmp_path):
    import subprocess
    import sys

    for name in ("first", "second"):
        subprocess.run([sys.executable, "-c", EXPORT_IN_A_FRESH_PROCESS, str(tmp_path / name)], check=True, timeout=120)
    exports = {path.read_bytes() for path in tmp_path.glob("*/model.safetensors")}
    assert len(list(tmp_path.glob("*/model.safetensors"))) == 8 and len(exports) == 1


POOLING = OmegaConf.create({"_target_": "polymodal.models.pooling.AttentivePooling", "dim": 8, "num_heads": 2})


@pytest.mark.parametrize("meta_init", [False, True])
def test_seeded_builds_repeat_their_initial_weights(meta_init):
    def build():
        model = build_seeded_model(POOLING, seed=3, meta_init=meta_init)
        if meta_init:
            assert model.query.is_meta
            materialise_model(model, torch.device("cpu"))
        return model.state_dict()

    first, second = build(), build()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert first["query"].abs().max() <= 0.04 and first["query"].std() > 0  # initialize_weights() filled it


def test_meta_init_of_a_model_without_initialize_weights_is_a_config_error():
    linear = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2})
    with pytest.raises(ConfigError, match="meta_init needs Linear to define initialize_weights"):
        build_seeded_model(linear, seed=0, meta_init=True)
