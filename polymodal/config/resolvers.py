"""Interpolation resolvers: arithmetic ``${add:a,b}``, ``${mul:a,b}``, ``${div:a,b}``; ``${cache_root:}``, the
root of every polymodal cache (:func:`polymodal.files.cache_root`); and ``${include:path.yaml}``, the content of
another YAML file (read with ``yaml.safe_load``), placed in the config so a saved run config holds it rather than
pointing at it. The loader makes an include path relative to the file that names it.

``div`` is integer (floor) division when both operands are ints, true division otherwise, so
``${div:${constants.dim},${constants.heads}}`` stays an int that can size a layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from polymodal.files import cache_root

Number = int | float


def _number(value: object, resolver: str) -> Number:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"${{{resolver}:...}} needs numbers, got {value!r} ({type(value).__name__})")
    return value


def _add(a: object, b: object) -> Number:
    return _number(a, "add") + _number(b, "add")


def _mul(a: object, b: object) -> Number:
    return _number(a, "mul") * _number(b, "mul")


def _div(a: object, b: object) -> Number:
    numerator, denominator = _number(a, "div"), _number(b, "div")
    if denominator == 0:
        raise ValueError(f"${{div:{numerator},{denominator}}} divides by zero")
    if isinstance(numerator, int) and isinstance(denominator, int):
        return numerator // denominator
    return numerator / denominator


def _cache_root() -> str:
    return str(cache_root())


def _include(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"${{include:{path}}}: no such file")
    content = yaml.safe_load(file.read_text(encoding="utf-8"))
    return OmegaConf.create(content) if isinstance(content, (dict, list)) else content


_RESOLVERS: dict[str, Callable[..., Any]] = {
    "add": _add,
    "mul": _mul,
    "div": _div,
    "cache_root": _cache_root,
    "include": _include,
}


def register_resolvers() -> None:
    """Register the resolvers with OmegaConf; calling it again is a no-op."""
    for name, resolver in _RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
