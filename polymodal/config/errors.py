"""The one exception type of the config system, and the "did you mean" helper its messages use."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A problem in a config file or override.

    The message is short and self-contained (it names the offending key or file), so the CLI can print
    it as ``error: <message>`` without a traceback.
    """


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """Return `` — did you mean '<prefix><closest>'?`` for the closest candidate, or ``""`` if none is close.

    ``prefix`` is prepended to the suggestion only, so callers can compare bare key names (which keeps a
    shared ``experiment.`` prefix from making unrelated keys look similar) yet suggest the full dotted key.
    """
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" — did you mean '{prefix}{matches[0]}'?" if matches else ""
