"""Argument names checked against a callable's signature before anything is built, so that a misspelt key of a
``_target_`` node is a one-line ConfigError naming the key (and the closest valid one) instead of a TypeError from
deep inside Hydra."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from hydra.utils import get_object

from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.config.trusted_targets import check_trusted_targets

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
Settings = TypeVar("Settings")


def check_arguments(function: Callable[..., Any], keys: Iterable[str], path: str, list_accepted: bool = False) -> None:
    """Raise a ConfigError for the first of ``keys`` that ``function`` does not accept (none with ``**kwargs``);
    ``list_accepted``: the message ends with every key ``function`` takes."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in keys:
        if key not in accepted and key not in HYDRA_KEYS:
            listing = f" ({path} takes {', '.join(accepted)})" if list_accepted else ""
            raise ConfigError(f"unknown key '{path}.{key}'" + did_you_mean(key, accepted, f"{path}.") + listing)


def settings_from(kind: type[Settings], value: Settings | Mapping[str, Any] | None, path: str) -> Settings:
    """A nested settings section of a config, named by ``path``: ``value`` if it is a ``kind`` already, else ``kind``
    built from it as keyword arguments (None: no arguments). A wrong, unknown or missing key is a one-line
    ConfigError naming it and the keys ``kind`` takes."""
    if isinstance(value, kind):
        return value
    parameters = inspect.signature(kind).parameters
    takes = f"({path} takes {', '.join(parameters)})"
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of {kind.__name__}'s settings {takes}, got {value!r}")
    check_arguments(kind, [str(key) for key in value], path, list_accepted=True)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for name, parameter in parameters.items():
        if parameter.kind in named and parameter.default is inspect.Parameter.empty and name not in value:
            raise ConfigError(f"missing key '{path}.{name}' {takes}")
    return kind(**value)


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
