"""polymodal: pre-training large multimodal models on PyTorch's native stack.

``polymodal.load_run(path)`` opens a trained run, checkpoint or export for use from Python (:mod:`polymodal.runs`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def __getattr__(name: str) -> Any:
    """``load_run`` is imported on first use, so ``import polymodal`` (and ``polymodal --help``) stays cheap, and
    modules that read ``polymodal.__version__`` do not depend on ``polymodal.runs``."""
    if name == "load_run":
        return importlib.import_module("polymodal.runs").load_run
    raise AttributeError(f"module 'polymodal' has no attribute {name!r}")
