"""Load one experiment from YAML: compose ``defaults``, apply CLI overrides, resolve, validate.

Composition. A file may start with a ``defaults:`` list; each entry is either

* a path, ``- ../common/optim.yaml``: that file's content is merged at the top level, or
* a one-line mapping, ``- model: ../model/llama.yaml`` (a dotted key such as ``model.trunk`` nests deeper):
  that file's content is placed under that key.

Paths are relative to the file that lists them; the ``.yaml`` suffix may be omitted. Each listed file is
composed recursively (its own ``defaults:`` first), the entries are merged in list order, and the file's
own body is merged last, so it wins. Mappings merge key by key; any other value (lists included) is
replaced as a whole. A file that (indirectly) lists itself is an error.

Order of the remaining steps, and why:

1. the ``experiment:`` defaults of the schema are merged underneath, so every experiment key exists, can be
   overridden, and ends up in the saved config;
2. CLI overrides (see :mod:`polymodal.config.overrides`) are applied while interpolations are still
   unresolved, so ``constants.dim=64`` reaches every ``${constants.dim}``;
3. interpolations are resolved (resolvers: ``add``, ``mul``, ``div``, ``cache_root``, and ``include``, whose path
   is relative to the file that names it);
4. the result is validated against :mod:`polymodal.config.schema`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException

from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.config.overrides import Tree, apply_overrides, dotted_keys
from polymodal.config.resolvers import register_resolvers
from polymodal.config.validation import schema_defaults, validate_config
from polymodal.files import atomic_output

_DEFAULTS_KEY = "defaults"
_YAML_SUFFIXES = (".yaml", ".yml")


def shipped_configs() -> Path:
    """The folder of the experiment configs shipped inside the package (``configs/`` in the repository)."""
    return Path(__file__).resolve().parents[1] / "configs"


def experiment_configs() -> list[str]:
    """The names (``llm/tiny``) of the shipped configs that are whole experiments; the others are parts that
    experiments compose (model, data, optimizer, alphas, generation schedules)."""
    root = shipped_configs()
    names = []
    for path in sorted(root.rglob("*.yaml")):
        try:
            cfg = load_config(path)
        except ConfigError:  # a part: sections or values missing on its own
            continue
        if {"model", "data", "experiment"} <= set(cfg):
            names.append(str(path.relative_to(root).with_suffix("")))
    return names


def find_config(name: str | Path) -> Path:
    """``name`` if that file exists, else the shipped config it names: ``llm/tiny``, ``llm/tiny.yaml`` or
    ``configs/llm/tiny.yaml`` (so commands written for the repository work from any directory)."""
    path = Path(name)
    if path.is_file():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    for candidate in (relative, relative.with_name(relative.name + ".yaml")):
        shipped = shipped_configs() / candidate
        if not path.is_absolute() and shipped.is_file():
            return shipped
    return path  # not found anywhere: the loader says so, naming it


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load, compose, override, resolve and validate an experiment config (``_target_`` nodes kept); ``path`` may
    name a shipped config (:func:`find_config`)."""
    register_resolvers()
    tree = _merge_trees(schema_defaults(), _compose(find_config(path).resolve(), chain=(), listed_in=None))
    apply_overrides(tree, overrides)
    cfg = _create(tree)
    _resolve(cfg)
    validate_config(cfg)
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write ``cfg`` with interpolations resolved, atomically, creating parent directories."""
    with atomic_output(path) as temporary:
        OmegaConf.save(cfg, temporary, resolve=True)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _brief(error: Exception) -> str:
    """First line of an OmegaConf error (the rest repeats the key and object type), whitespace collapsed."""
    lines = str(error).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(error).__name__


def _read_yaml(path: Path, listed_in: Path | None) -> Tree:
    if not path.is_file():
        where = f" (listed in the defaults of {_display(listed_in)})" if listed_in else ""
        siblings = [p.name for p in path.parent.glob("*") if p.suffix in _YAML_SUFFIXES]
        shipped = "" if listed_in else " (`polymodal configs list` shows the shipped ones)"
        raise ConfigError(
            f"config file not found: {_display(path)}{where}" + did_you_mean(path.name, siblings) + shipped
        )
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        raise ConfigError(f"{_display(path)}: invalid YAML: {' '.join(str(error).split())}") from error
    except OmegaConfBaseException as error:
        key = f" at key '{error.full_key}'" if error.full_key else ""
        raise ConfigError(f"{_display(path)}{key}: {_brief(error)}") from error
    except OSError as error:  # unreadable, or a top level that is a scalar
        raise ConfigError(f"{_display(path)}: cannot load: {error}") from error
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{_display(path)}: the top level must be a mapping, got a list")
    return _anchor_includes(OmegaConf.to_container(loaded, resolve=False), path.parent)


_INCLUDE = re.compile(r"\$\{include:\s*([^}]+?)\s*\}")


def _anchor_includes(node: Any, directory: Path) -> Any:
    """Every ``${include:relative/path}`` made absolute against ``directory``, the including file's folder."""
    if isinstance(node, dict):
        return {key: _anchor_includes(value, directory) for key, value in node.items()}
    if isinstance(node, list):
        return [_anchor_includes(value, directory) for value in node]
    if isinstance(node, str):
        return _INCLUDE.sub(lambda match: "${include:" + str((directory / match.group(1)).resolve()) + "}", node)
    return node


def _default_entries(body: Tree, path: Path) -> list[tuple[str | None, Path]]:
    """Pop ``defaults:`` from a file body as (key to place the content under or None, resolved path)."""
    entries = body.pop(_DEFAULTS_KEY, None) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{_display(path)}: '{_DEFAULTS_KEY}' must be a list, got {entries!r}")
    targets: list[tuple[str | None, Path]] = []
    for entry in entries:
        if isinstance(entry, str):
            targets.append((None, _default_path(path, entry)))
        elif (
            isinstance(entry, dict)
            and entry
            and all(isinstance(key, str) and key and isinstance(value, str) for key, value in entry.items())
        ):
            targets.extend((key, _default_path(path, value)) for key, value in entry.items())
        else:
            raise ConfigError(f"{_display(path)}: defaults entry {entry!r} must be a path or a 'key: path' mapping")
    return targets


def _default_path(listed_in: Path, entry: str) -> Path:
    candidate = listed_in.parent / entry
    if candidate.suffix not in _YAML_SUFFIXES:
        candidate = candidate.with_name(candidate.name + ".yaml")
    return candidate.resolve()


def _compose(path: Path, chain: tuple[Path, ...], listed_in: Path | None) -> Tree:
    if path in chain:
        cycle = " -> ".join(_display(p) for p in (*chain, path))
        raise ConfigError(f"defaults cycle: {cycle}")
    body = _read_yaml(path, listed_in)
    composed: Tree = {}
    for key, included_path in _default_entries(body, path):
        included: Any = _compose(included_path, (*chain, path), listed_in=path)
        if key is not None:
            for part in reversed(key.split(".")):
                included = {part: included}
        composed = _merge_trees(composed, included)
    return _merge_trees(composed, body)


def _merge_trees(base: Tree, top: Tree) -> Tree:
    """Merge ``top`` over ``base``: mappings key by key, anything else replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def _create(tree: Tree) -> DictConfig:
    """``OmegaConf.create`` with its errors (e.g. a malformed ``${`` from an override) as ConfigErrors."""
    try:
        return OmegaConf.create(tree)
    except OmegaConfBaseException as error:
        key = f" at key '{error.full_key}'" if error.full_key else ""
        raise ConfigError(f"invalid value{key}: {_brief(error)}") from error


def _resolve(cfg: DictConfig) -> None:
    """Resolve all interpolations in place; a failure names the key that holds the broken interpolation."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as error:
        broken = _find_broken_interpolation(cfg, "")
        if broken is None:
            raise ConfigError(f"cannot resolve interpolations: {_brief(error)}") from error
        key, raw, cause = broken
        suggestion = ""
        if isinstance(cause, InterpolationKeyError):
            missing = re.search(r"'([^']+)'", str(cause))
            if missing:
                suggestion = did_you_mean(missing.group(1), dotted_keys(OmegaConf.to_container(cfg)))
        raise ConfigError(f"{key}: cannot resolve {raw!r}: {_brief(cause)}{suggestion}") from error


def _find_broken_interpolation(node: DictConfig | ListConfig, path: str) -> tuple[str, str, Exception] | None:
    """(key, raw interpolation, error) of the first interpolation under ``node`` that fails to resolve."""
    raw_node = OmegaConf.to_container(node, resolve=False)
    keys = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))
    for key in keys:
        key_path = f"{path}[{key}]" if isinstance(node, ListConfig) else (f"{path}.{key}" if path else str(key))
        if OmegaConf.is_interpolation(node, key):
            try:
                node[key]
            except OmegaConfBaseException as error:
                return key_path, raw_node[key], error
        elif not OmegaConf.is_missing(node, key) and isinstance(node[key], (DictConfig, ListConfig)):
            found = _find_broken_interpolation(node[key], key_path)
            if found is not None:
                return found
    return None
