import pytest
import torch
from torch import nn

from polymodal.checkpoint.weights import export_weights, load_pretrained, tensor_aliases


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
