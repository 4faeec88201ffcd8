"""Check a config against the dataclasses of :mod:`polymodal.config.schema`.

A small walker instead of OmegaConf structured configs, which handle neither ``Literal`` nor unions well:
unknown keys, wrong types, disallowed values and missing sections become ConfigErrors that name the key,
what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf

from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.config.schema import ExperimentConfig, RootConfig


def validate_config(cfg: DictConfig) -> RootConfig:
    """Validate a resolved config; return it typed (``Any`` sections stay config nodes)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"mandatory value(s) not set (still '???'): {', '.join(missing)}")
    return _build(RootConfig, cfg, path="")


def experiment_config(cfg: DictConfig) -> ExperimentConfig:
    """The typed ``experiment:`` section of a config (the whole config is validated)."""
    return validate_config(cfg).experiment


def build_section(schema: type, node: Any, path: str) -> Any:
    """Dataclass ``schema`` built from the mapping ``node`` with the checks of the config schema (unknown keys with a
    suggestion, types, rules), for a mapping that a ``_target_`` class takes as one argument; ``path`` is its dotted
    key in the config, for the messages."""
    return _build(schema, node, path)


def schema_defaults() -> dict[str, Any]:
    """The top-level sections that have defaults, as a plain tree (the whole ``experiment:`` section)."""
    defaults: dict[str, Any] = {}
    for spec in dataclasses.fields(RootConfig):
        if spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
            defaults[spec.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        elif spec.default is not dataclasses.MISSING:
            defaults[spec.name] = spec.default
    return defaults


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _found(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    kind = {dict: "mapping", list: "list", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


def _describe(expected: Any) -> str:
    origin, args = get_origin(expected), get_args(expected)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _describe(arg) for arg in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    if expected is Any:
        return "any value"
    if dataclasses.is_dataclass(expected):
        return "a mapping"
    return expected.__name__


def _build(schema: type, node: Any, path: str) -> Any:
    """Instantiate dataclass ``schema`` from a mapping node, checking every key."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {_found(node)}")
    specs = {spec.name: spec for spec in dataclasses.fields(schema)}
    hints = get_type_hints(schema)
    for key in node:
        if str(key) not in specs:
            kind = "key" if path else "top-level section"
            prefix = f"{path}." if path else ""
            raise ConfigError(f"unknown {kind} '{_join(path, str(key))}'" + did_you_mean(str(key), specs, prefix))
    values = {}
    for name, spec in specs.items():
        key_path = _join(path, name)
        if name in node:
            values[name] = _check_rule(spec, _check(hints[name], node[name], key_path), key_path)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required {'key' if path else 'section'} '{key_path}'")
    return schema(**values)


def _check_rule(spec: dataclasses.Field, value: Any, path: str) -> Any:
    rule = spec.metadata.get("rule")
    if rule is not None and value is not None and not rule.holds(value):
        raise ConfigError(f"{path} {rule.requirement}, got {_found(value)}")
    return value


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _check(expected: Any, value: Any, path: str) -> Any:
    """Return ``value`` converted to ``expected`` (int -> float, containers -> plain), or raise ConfigError."""
    origin, args = get_origin(expected), get_args(expected)
    if expected is Any:
        return value
    if dataclasses.is_dataclass(expected):
        return _build(expected, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in (arg for arg in args if arg is not type(None)):
            try:
                return _check(arm, value, path)
            except ConfigError:
                continue
    elif origin is Literal:
        if any(value == arg and type(value) is type(arg) for arg in args):
            return value
    elif origin is list:
        if isinstance(value, (list, ListConfig)):
            return [_plain(_check(args[0], item, f"{path}[{index}]")) for index, item in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            return {
                _check(args[0], key, f"{path} (key {key!r})"): _plain(_check(args[1], item, _join(path, str(key))))
                for key, item in value.items()
            }
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected in (int, str, bool):
        if type(value) is expected:
            return value
    else:
        raise TypeError(f"schema type {expected!r} at {path} is not supported by the validator")
    raise ConfigError(f"{path}: expected {_describe(expected)}, got {_found(value)}")
