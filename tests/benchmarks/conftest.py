"""Loading a benchmark script as a module, as ``python benchmarks/<name>.py`` runs it."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``<name>_benchmark``, with its sibling helpers importable while it
    loads (a script run directly has its own folder first on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def benchmark(request) -> ModuleType:
    """The script a test module names in ``BENCHMARK`` (e.g. ``"masking"`` for benchmarks/masking.py)."""
    return load_benchmark(request.module.BENCHMARK)


@pytest.fixture
def restore_threads():
    """Torch's thread count as it was before the test (a benchmark's ``--threads`` sets it for the process)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
