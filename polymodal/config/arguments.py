"""Argument names checked against a callable's signature before anything is built, so that a misspelt key of a
``_target_`` node is a one-line ConfigError naming the key (and the closest valid one) instead of a TypeError from
deep inside Hydra."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hydra.utils import get_object

from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.config.trusted_targets import check_trusted_targets

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})


def check_arguments(function: Callable[..., Any], keys: Iterable[str], path: str) -> None:
    """Raise a ConfigError for the first of ``keys`` that ``function`` does not accept (none with ``**kwargs``)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in keys:
        if key not in accepted and key not in HYDRA_KEYS:
            raise ConfigError(f"unknown key '{path}.{key}'" + did_you_mean(key, accepted, f"{path}."))


def check_target_arguments(node: Mapping[str, Any], path: str) -> None:
    """Check the keys of a ``_target_`` node (a trusted target only: locating it imports its module)."""
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        raise ConfigError(f"{path}: expected a mapping with a _target_ (the class or function to build)")
    check_trusted_targets(node)
    try:
        target = get_object(node["_target_"])
    except Exception as error:  # Hydra wraps every import failure in its own exception types
        reason = " ".join(str(error).split())
        raise ConfigError(f"{path}._target_: cannot locate {node['_target_']!r}: {reason}") from error
    check_arguments(target, [str(key) for key in node], path)
