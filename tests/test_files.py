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


LOCK_HOLDER = """
import sys, time
from polymodal.files import run_directory_lock
with run_directory_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_run_directory(directory: Path):
    """A separate process holding ``directory``'s run lock (returned once it holds it)."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_directory_has_one_run_and_a_dead_holder_leaves_it_free(tmp_path):
    from polymodal.files import RunDirectoryBusy, run_directory_lock

    holder = hold_run_directory(tmp_path / "run")
    try:
        with pytest.raises(RunDirectoryBusy, match=rf"run is in use by pid {holder.pid} on "):
            with run_directory_lock(tmp_path / "run"):
                pass
    finally:
        holder.kill()  # like kill -9: no clean-up runs, the lock file stays behind
        holder.wait()
    assert (tmp_path / "run" / ".lock").exists()
    with run_directory_lock(tmp_path / "run"):  # taken over
        assert f"pid {__import__('os').getpid()} " in (tmp_path / "run" / ".lock").read_text()


def test_a_second_training_run_on_a_busy_directory_is_one_line(tiny_config, tmp_path, capsys):
    from polymodal.cli import main

    holder = hold_run_directory(tmp_path / "run")
    try:
        assert main(["train", "--config", str(tiny_config)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"is in use by pid {holder.pid}" in error
        assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--config", str(tiny_config)]) == 0
