import json
import logging

import pytest
import torch

from polymodal.train import mfu as peak
from polymodal.train.mfu import PEAK_FLOPS, device_peak_flops, mfu


def test_mfu_ratio_and_bad_input():
    assert mfu(6e12, 2.0, 1e12, num_devices=3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step_time_s"):
        mfu(1e12, 0.0, 1e12)
    with pytest.raises(ValueError, match="num_devices"):
        mfu(1e12, 1.0, 1e12, num_devices=0)


def test_peak_table_matches_longest_gpu_name(monkeypatch):
    assert peak._table_peak("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert peak._table_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert peak._table_peak("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert peak._table_peak("NVIDIA A10G", torch.bfloat16) == PEAK_FLOPS["A10G"]["bf16"]
    assert peak._table_peak("NVIDIA A10", torch.bfloat16) == PEAK_FLOPS["A10"]["bf16"]
    assert peak._table_peak("Some Future GPU", torch.bfloat16) is None
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert peak._table_peak("NVIDIA A100-SXM4-40GB", torch.float32) == 156e12


@pytest.fixture(autouse=True)
def new_process(monkeypatch):
    """Each test starts as a fresh process would: nothing probed yet."""
    monkeypatch.setattr(peak, "_measured_this_process", {})


def test_cpu_probe_runs_once_per_process_and_the_cache_keeps_the_highest_rate(tmp_path, monkeypatch):
    rates, sizes = iter([1.5e11, 1.0e11, 0.5e11, 1.2e11, 2.0e11, 1.9e11]), []

    def probe(device, dtype, size=1024, repeats=5):
        sizes.append(size)
        return next(rates)

    monkeypatch.setattr(peak, "measure_matmul_flops", probe)
    cpu = torch.device("cpu")
    assert device_peak_flops(cpu, torch.float32, cache_dir=tmp_path) == 1.5e11  # the best of the two sizes
    assert device_peak_flops(cpu, torch.float32, cache_dir=tmp_path) == 1.5e11  # no second probe
    assert sizes == [1024, 2048]
    monkeypatch.setattr(peak, "_measured_this_process", {})  # a later process on a busier machine
    assert device_peak_flops(cpu, torch.float32, cache_dir=tmp_path) == 1.5e11
    monkeypatch.setattr(peak, "_measured_this_process", {})  # and one on a quieter machine
    assert device_peak_flops(cpu, torch.float32, cache_dir=tmp_path) == 2.0e11
    cache = json.loads((tmp_path / "peak_flops.json").read_text())
    assert list(cache.values()) == [2.0e11]
    assert "cpu|torch.float32|" in next(iter(cache))


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE_DIR", str(tmp_path / "env_cache"))
    monkeypatch.setattr(peak, "measure_matmul_flops", lambda device, dtype, size=1024, repeats=5: 2e11)
    assert device_peak_flops(torch.device("cpu"), torch.bfloat16) == 2e11
    assert (tmp_path / "env_cache" / "peak_flops.json").exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", "\xff\xfe"])
def test_corrupt_cache_is_ignored_and_rewritten(tmp_path, monkeypatch, caplog, content):
    cache_file = tmp_path / "peak_flops.json"
    cache_file.write_bytes(content.encode("latin-1"))
    monkeypatch.setattr(peak, "measure_matmul_flops", lambda device, dtype, size=1024, repeats=5: 3e11)
    with caplog.at_level(logging.WARNING, logger="polymodal.train.mfu"):
        assert device_peak_flops(torch.device("cpu"), torch.float32, cache_dir=tmp_path) == 3e11
    assert "Ignoring" in caplog.text
    assert list(json.loads(cache_file.read_text()).values()) == [3e11]


def test_real_probe_measures_a_positive_rate():
    assert peak.measure_matmul_flops(torch.device("cpu"), torch.float32, size=128, repeats=2) > 0
