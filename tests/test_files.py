"""The one cache rule of ``polymodal.files``, and its crash-safe writes."""

from pathlib import Path

import pytest

from polymodal.files import CACHE_DIR_ENV, atomic_output, cache_dir, cache_root


def test_cache_root_prefers_the_explicit_variable_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert cache_root() == tmp_path / "xdg" / "polymodal"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "polymodal"


def test_a_cache_dir_argument_is_always_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "root"))
    assert cache_dir("shard_index") == tmp_path / "root" / "shard_index"
    assert cache_dir("shard_index", tmp_path / "mine") == tmp_path / "mine" / "shard_index"


def test_every_cache_of_the_library_lands_under_the_root(monkeypatch, tmp_path):
    """The shard index, the text token cache and the peak-FLOP/s probe all follow cache_root()."""
    import torch

    from polymodal.data.multimodal import MultimodalShards
    from polymodal.data.synth.writers import write_shards
    from polymodal.train import mfu

    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(root))
    write_shards(tmp_path / "scenes", num_samples=4, samples_per_shard=4, seed=0, size=16, modalities=("rgb",))
    MultimodalShards(str(tmp_path / "scenes" / "[rgb]" / "shard-{00000..00000}.tar"))
    assert list((root / "shard_index").glob("shard-index-*.json"))
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda device, dtype, size=1024, repeats=5: 1e9)
    mfu.device_peak_flops(torch.device("cpu"), torch.float32)
    assert (root / "peak_flops.json").is_file()


def test_atomic_output_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("crash")
    assert not target.exists() and not list(tmp_path.iterdir())
