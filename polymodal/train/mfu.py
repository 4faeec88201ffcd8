"""Model FLOPs utilisation: the device's dense peak FLOP/s and the MFU ratio. The model's FLOPs come from the
model itself (``train_flops``, with the formulas of :mod:`polymodal.models.flops`), else from FlopCounterMode on a
fake-tensor twin (:mod:`polymodal.train.flop_count`).

* Peaks are *dense* numbers. Vendor headline figures that assume 2:4 structured sparsity are twice these
  and are never used here.
* On CPU (or an unknown GPU) the "peak" is a measured large-matmul throughput in the same dtype on the same
  machine. Such a CPU-MFU is a regression metric for this box only, never comparable to GPU MFU. A probe run
  while other processes share the cores reads low (on a 2-core box: 108 GFLOP/s busy vs 378 quiet), so every
  process measures once and the cache keeps the highest rate any run has measured: one busy measurement cannot
  pin MFU above 1 for good.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import torch

from polymodal.files import atomic_output, cache_root

logger = logging.getLogger(__name__)

# Dense tensor-core peaks in FLOP/s per device, keyed by a substring of `torch.cuda.get_device_name()`.
# Keys: "bf16" / "fp16" (tensor cores, fp32 accumulate), "tf32" (fp32 matmuls with TF32 allowed) and
# "fp32" (no tensor cores). A dtype missing from an entry is measured with the matmul probe instead.
# Longer keys are matched first, so "H100 PCIe" wins over "H100" and "A100" / "A10G" over "A10".
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "B200": {"bf16": 2.25e15, "fp16": 2.25e15},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    # AWS's A10G has fewer tensor-core FLOPs than the A10 datasheet's 125 TF; the public comparisons put it
    # at ~70 TF dense fp16/bf16. Its tf32/fp32 figures are not pinned down, so those are measured.
    "A10G": {"bf16": 70e12, "fp16": 70e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    # V100 tensor cores have no bf16 and no tf32: bf16 and tf32 are measured.
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
}

_PEAK_CACHE_FILE = "peak_flops.json"
_warned_unknown_gpus: set[str] = set()
# Compute-bound, yet well under a second per matmul. On a CPU the best of two sizes: with several threads a
# 1024^2 matmul can read half the rate of a 2048^2 one.
_PROBE_MATMUL_SIZES = {"cpu": (1024, 2048)}
_GPU_PROBE_MATMUL_SIZES = (8192,)
_measured_this_process: dict[str, float] = {}  # probe key -> FLOP/s: one probe per process and key


def mfu(flops_per_step: float, step_time_s: float, peak_flops: float, num_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved FLOP/s divided by the summed dense peak of all devices."""
    for name, value in (
        ("flops_per_step", flops_per_step),
        ("step_time_s", step_time_s),
        ("peak_flops", peak_flops),
        ("num_devices", num_devices),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    return flops_per_step / step_time_s / (peak_flops * num_devices)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of a ``size x size`` matmul in ``dtype`` on ``device`` (after a warm-up)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    _synchronize(device, torch.matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _synchronize(device, torch.matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def device_peak_flops(device: torch.device, dtype: torch.dtype, cache_dir: Path | None = None) -> float:
    """Dense peak FLOP/s of one ``device`` for matmuls in ``dtype``.

    CUDA devices are looked up in :data:`PEAK_FLOPS`. A GPU or dtype not in the table (warned once per
    GPU), and every non-CUDA device, gets a measured matmul throughput instead: probed once per process, and the
    highest rate measured so far is kept in ``<cache_dir>/peak_flops.json`` (default:
    :func:`polymodal.files.cache_root`), keyed by device kind, dtype, processor model and torch thread count. An
    unreadable cache is ignored and rewritten.
    """
    device = torch.device(device)
    if device.type == "cuda":
        gpu_name = torch.cuda.get_device_name(device)
        peak = _table_peak(gpu_name, dtype)
        if peak is not None:
            return peak
        if gpu_name not in _warned_unknown_gpus:
            _warned_unknown_gpus.add(gpu_name)
            logger.warning(
                "No dense peak FLOP/s known for %r in %s; measuring a matmul instead (MFU will be "
                "relative to that measurement)",
                gpu_name,
                dtype,
            )
    return _cached_probe(device, dtype, Path(cache_dir or cache_root()) / _PEAK_CACHE_FILE)


def _table_peak(gpu_name: str, dtype: torch.dtype) -> float | None:
    dtype_key = _peak_dtype_key(dtype)
    if dtype_key is None:
        return None
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in gpu_name:
            return PEAK_FLOPS[key].get(dtype_key)
    return None


def _peak_dtype_key(dtype: torch.dtype) -> str | None:
    if dtype == torch.float32:
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)


def _probe_cache_key(device: torch.device, dtype: torch.dtype) -> str:
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else _processor_model()
    return f"{device.type}|{dtype}|{hardware}|threads={torch.get_num_threads()}"


def _processor_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _cached_probe(device: torch.device, dtype: torch.dtype, cache_file: Path) -> float:
    """The highest of this process's probe (run once per key) and every rate cached before it."""
    key = _probe_cache_key(device, dtype)
    if key not in _measured_this_process:
        sizes = _PROBE_MATMUL_SIZES.get(device.type, _GPU_PROBE_MATMUL_SIZES)
        _measured_this_process[key] = max(measure_matmul_flops(device, dtype, size=size, repeats=3) for size in sizes)
    measured = _measured_this_process[key]
    cache = _read_cache(cache_file)
    cached = cache.get(key)
    if isinstance(cached, (int, float)) and cached >= measured:
        return float(cached)
    logger.info("Measured %.3g FLOP/s for %s; caching it in %s", measured, key, cache_file)
    cache[key] = measured
    _write_cache(cache_file, cache)
    return measured


def _read_cache(cache_file: Path) -> dict[str, object]:
    if not cache_file.exists():
        return {}
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("Ignoring unreadable peak-FLOP/s cache %s (%s); it will be rewritten", cache_file, err)
        return {}
    if not isinstance(cache, dict):
        logger.warning("Ignoring peak-FLOP/s cache %s: not a JSON object; it will be rewritten", cache_file)
        return {}
    return cache


def _write_cache(cache_file: Path, cache: dict[str, object]) -> None:
    """Atomic write, so concurrent ranks never read a half-written cache."""
    try:
        with atomic_output(cache_file) as tmp:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
    except OSError as err:
        logger.warning("Could not write peak-FLOP/s cache %s: %s", cache_file, err)


def _synchronize(device: torch.device, result: torch.Tensor) -> None:
    """Wait for ``result`` to be computed: asynchronous devices return before the kernel finishes."""
    if device.type != "cpu":
        result.sum().item()
