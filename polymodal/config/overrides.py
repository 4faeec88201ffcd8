"""Command-line overrides, applied to the composed config tree before interpolations are resolved.

Grammar (one override per string):

* ``a.b.c=value`` sets a key that already exists; ``value`` is parsed as YAML (``3``, ``3e-4``, ``[1,2]``,
  ``{k: v}``, ``null``, ``true``, ``'a b'``, ``${constants.dim}``); ``a.b=`` sets the empty string.
* ``+a.b=value`` adds a key that must not exist yet (missing parent mappings are created).
* ``~a.b`` deletes a key.

A numeric path component indexes a list (``data.sources.0.weight=2``). The tree is the plain
``dict``/``list`` form of the config with interpolation strings still unresolved, which is why overriding
``constants.dim`` reaches every ``${constants.dim}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from polymodal.config.errors import ConfigError, did_you_mean

Tree = dict[str, Any]


class _ValueLoader(yaml.SafeLoader):
    """YAML 1.1 safe loader that reads ``3e-4`` as a float and keeps dates as strings, like OmegaConf does
    for config files, so a value means the same on the command line as in a file."""


_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_ValueLoader.yaml_implicit_resolvers = {
    first_char: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first_char, resolvers in _ValueLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class Override:
    """One parsed override: ``action`` on the dotted ``key`` (``value`` is unused for ``delete``)."""

    action: Literal["set", "add", "delete"]
    key: str
    value: Any
    text: str


def parse_override(text: str) -> Override:
    """Parse ``a.b=v`` / ``+a.b=v`` / ``~a.b``; raise ConfigError if malformed."""
    stripped = text.strip()
    if stripped.startswith("~"):
        if "=" in stripped:
            raise ConfigError(f"override {text!r}: a delete ('~key') takes no value")
        return Override("delete", _checked_key(stripped[1:], text), None, text)
    action: Literal["set", "add"] = "add" if stripped.startswith("+") else "set"
    body = stripped[1:] if action == "add" else stripped
    key, separator, raw_value = body.partition("=")
    if not separator:
        raise ConfigError(f"override {text!r} is not of the form key=value, +key=value or ~key")
    return Override(action, _checked_key(key.strip(), text), _parse_value(raw_value.strip(), text), text)


def apply_overrides(tree: Tree, overrides: Sequence[str]) -> None:
    """Apply the overrides in order to ``tree`` (modified in place)."""
    for text in overrides:
        override = parse_override(text)
        parts = override.key.split(".")
        if override.action == "add":
            _add(tree, parts, override)
            continue
        parent = _existing_parent(tree, parts, override)
        last = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        if override.action == "set":
            parent[last] = override.value
        else:
            del parent[last]


def dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every key path in a plain tree, intermediate ones included (``a``, ``a.b``, ``a.b.0``, ...)."""
    if isinstance(tree, dict):
        items = ((str(key), value) for key, value in tree.items())
    elif isinstance(tree, list):
        items = ((str(index), value) for index, value in enumerate(tree))
    else:
        return []
    keys: list[str] = []
    for name, value in items:
        path = f"{prefix}.{name}" if prefix else name
        keys.append(path)
        keys.extend(dotted_keys(value, path))
    return keys


def _checked_key(key: str, text: str) -> str:
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: invalid key {key!r}")
    return key


def _parse_value(raw: str, text: str) -> Any:
    if raw == "":
        return ""
    try:
        return yaml.load(raw, Loader=_ValueLoader)  # _ValueLoader derives from SafeLoader
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"override {text!r}: cannot parse the value as YAML ({reason})") from error


def _child(node: Any, part: str) -> tuple[bool, Any]:
    """(found, child) for one path component, without raising."""
    if isinstance(node, dict) and part in node:
        return True, node[part]
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return True, node[int(part)]
    return False, None


def _existing_parent(tree: Tree, parts: list[str], override: Override) -> Any:
    """The container holding the last component of an existing key, or a ConfigError with a suggestion."""
    parent: Any = None
    node: Any = tree
    for depth, part in enumerate(parts):
        found, child = _child(node, part)
        if not found:
            raise ConfigError(_no_such_key(tree, parts, depth, node, override))
        parent, node = node, child
    return parent


def _no_such_key(tree: Tree, parts: list[str], depth: int, node: Any, override: Override) -> str:
    """Suggest the closest full key when a parent is missing, else the closest sibling of the missing key."""
    verb = "set" if override.action == "set" else "delete"
    message = f"cannot {verb} '{override.key}': no such key"
    parent = ".".join(parts[:depth])
    suggestion = ""
    if depth < len(parts) - 1:
        suggestion = did_you_mean(override.key, dotted_keys(tree))
    if not suggestion and isinstance(node, dict):
        suggestion = did_you_mean(parts[depth], [str(key) for key in node], f"{parent}." if parent else "")
    if not suggestion and depth > 0 and not isinstance(node, (dict, list)):
        suggestion = f" ('{parent}' is not a mapping)"
    message += suggestion
    if override.action == "set":
        message += f" (use '+{override.key}=...' to add a new key)"
    return message


def _add(tree: Tree, parts: list[str], override: Override) -> None:
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict):
            raise ConfigError(f"cannot add '{override.key}': '{'.'.join(parts[:depth])}' is not a mapping")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise ConfigError(f"cannot add '{override.key}': '{'.'.join(parts[:-1])}' is not a mapping")
    if parts[-1] in node:
        raise ConfigError(f"cannot add '{override.key}': it already exists (use '{override.key}=...' to change it)")
    node[parts[-1]] = override.value
