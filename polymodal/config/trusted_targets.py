"""Which ``_target_`` callables a config may name: an allow-list of module prefixes, checked before Hydra builds
anything.

A config (or a run's saved ``config.yaml``, which ``polymodal export`` and ``generate`` build the model from) is
data, and data must not run arbitrary code: without a check, ``_target_: builtins.open`` with ``file`` and
``mode: w`` empties a file, and older Hydra releases let ``os.system`` through. By default a target must lie under
:data:`DEFAULT_TRUSTED`. Code of your own is trusted from outside the config — a config cannot vouch for itself —
with the ``POLYMODAL_TRUSTED_TARGETS`` environment variable (comma-separated prefixes, e.g. ``mylab.,lab_utils.``)
or :func:`trust_targets` in Python.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig

from polymodal.config.errors import ConfigError

TRUSTED_TARGETS_ENV = "POLYMODAL_TRUSTED_TARGETS"
DEFAULT_TRUSTED = ("polymodal.", "torch.nn.", "torch.optim.", "torchvision.transforms.")
_trusted_in_process: list[str] = []


def trust_targets(*prefixes: str) -> None:
    """Let configs name callables under ``prefixes`` (module paths such as ``"mylab."`` or ``"mylab.models.Net"``)
    for the rest of this process."""
    for prefix in prefixes:
        if not prefix or not isinstance(prefix, str):
            raise ValueError(f"a trusted prefix is a module path such as 'mylab.', got {prefix!r}")
        _trusted_in_process.append(prefix)


def trusted_prefixes() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get(TRUSTED_TARGETS_ENV, "").split(",") if p.strip()]
    return (*DEFAULT_TRUSTED, *extra, *_trusted_in_process)


def is_trusted(target: str, prefixes: Sequence[str]) -> bool:
    """Whether ``target`` is one of ``prefixes`` or lies under one (``torch.nn.`` covers ``torch.nn.Linear``; a
    prefix without a trailing dot also covers its own submodules: ``mylab`` covers ``mylab.Net``)."""
    return any(target == p.rstrip(".") or target.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, (DictConfig, Mapping)):
        if "_target_" in node:
            yield path or "the top-level node", node["_target_"]
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (ListConfig, list, tuple)):
        for index, value in enumerate(node):
            yield from _targets(value, f"{path}[{index}]")


def check_trusted_targets(node: Any) -> None:
    """Raise a ConfigError naming the first ``_target_`` string in ``node`` (and its config path) that is not
    trusted."""
    prefixes = trusted_prefixes()
    where = node._get_full_key(None) if isinstance(node, DictConfig) else ""  # e.g. "model" for cfg.model
    for path, target in _targets(node, where):
        if isinstance(target, str) and not is_trusted(target, prefixes):
            raise ConfigError(
                f"{path}: _target_ {target!r} is not trusted (configs may build objects under "
                f"{', '.join(prefixes)} only); trust your own code outside the config: {TRUSTED_TARGETS_ENV}=mylab. "
                "or polymodal.config.trust_targets('mylab.')"
            )
