"""Build objects from ``_target_`` nodes with Hydra, turning Hydra's failures into short ConfigErrors."""

from __future__ import annotations

import inspect
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate

from polymodal.config.aliases import update_targets
from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.config.trusted_targets import check_trusted_targets

_FULL_KEY = re.compile(r"^full_key: (.+)$", re.MULTILINE)
_TARGET = re.compile(r"target '([^']+)'", re.IGNORECASE)
_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def instantiate(node: Any, /, **kwargs: Any) -> Any:
    """Instantiate ``node`` (a config node or plain dict with ``_target_``; nested targets are built first).

    ``kwargs`` override or complete the node's arguments, which is how callers inject run-time objects
    (``params=model.parameters()``, ``dataset=...``). A node with ``_partial_: true`` returns a
    ``functools.partial`` to be completed by the caller. ``None`` returns ``None``.

    Containers are converted to plain ``list``/``dict`` (``_convert_="all"``, unless the caller passes its own
    ``_convert_``), so blocks receive ordinary Python values: torch rejects a ``ListConfig`` where it wants a
    size (``torch.zeros(ListConfig([2, 3]))`` raises), ``isinstance(x, list)`` checks fail on it, and a
    config node kept by a module would hold a reference to the whole config.

    Every ``_target_`` must be trusted (:mod:`polymodal.config.trusted_targets`), else nothing is built.
    """
    kwargs.setdefault("_convert_", "all")
    update_targets(node)  # configs written before the families layout name the old modules
    check_trusted_targets(node)
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from error
        raise ConfigError(_failure_message(error)) from error


def _failure_message(error: InstantiationException) -> str:
    """'cannot instantiate <path> (_target_: <target>): <cause>' from Hydra's exception."""
    message = str(error)
    full_key = _FULL_KEY.search(message)
    target = _TARGET.search(message)
    where = f"'{full_key.group(1).strip()}'" if full_key else "the top-level node"
    target_name = target.group(1) if target else "?"
    cause = error.__cause__
    reason = f"{type(cause).__name__}: {cause}" if cause is not None else message.splitlines()[0]
    unexpected = _UNEXPECTED.search(str(cause)) if isinstance(cause, TypeError) else None
    suggestion = did_you_mean(unexpected.group(1), _parameter_names(target_name)) if unexpected else ""
    return f"cannot instantiate {where} (_target_: {target_name}): {' '.join(reason.split())}{suggestion}"


def _parameter_names(target: str) -> list[str]:
    """The keyword arguments the callable ``target`` takes (none if it cannot be found or inspected)."""
    try:
        return list(inspect.signature(get_object(target)).parameters)
    except (ImportError, ValueError, TypeError):
        return []
