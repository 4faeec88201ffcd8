"""4M shard path syntax: ``root/[rgb,depth]/shard-{00000..00099}.tar`` -> one URL list per modality.

* ``[a,b,...]`` (at most one group) lists the modalities; each name is substituted in its place.
* ``{start..end}`` is an inclusive integer range, zero-padded to the width of ``start`` when ``start`` has a
  leading zero (``{00000..00099}``); ``{x,y,z}`` is a list of alternatives. Several brace groups expand as
  their product, left to right; braces do not nest.
* Without brackets the pattern names one modality: the folder that holds the shard files
  (``root/rgb/shard-{0..9}.tar`` -> ``rgb``).

Expansion is pure string work, so local paths and ``s3://`` URLs behave the same.
"""

from __future__ import annotations

import itertools
import re

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def _check_balanced(pattern: str, opening: str, closing: str) -> None:
    depth = 0
    for position, char in enumerate(pattern):
        if char == opening:
            depth += 1
            if depth > 1:
                raise ValueError(f"shard pattern {pattern!r}: nested {opening!r} at position {position}")
        elif char == closing:
            depth -= 1
            if depth < 0:
                raise ValueError(f"shard pattern {pattern!r}: unmatched {closing!r} at position {position}")
    if depth:
        raise ValueError(f"shard pattern {pattern!r}: unclosed {opening!r}")


def _brace_alternatives(pattern: str, body: str) -> list[str]:
    match = _RANGE.match(body)
    if match:
        start_text, end_text = match.groups()
        start, end = int(start_text), int(end_text)
        if start > end:
            raise ValueError(f"shard pattern {pattern!r}: range {{{body}}} has start > end")
        width = len(start_text) if len(start_text) > 1 and start_text.startswith("0") else 0
        return [str(i).zfill(width) for i in range(start, end + 1)]
    alternatives = body.split(",")
    if len(alternatives) < 2 or any(not a for a in alternatives):
        raise ValueError(
            f"shard pattern {pattern!r}: brace group {{{body}}} is neither a range 'a..b' nor a list 'x,y'"
        )
    return alternatives


def expand_braces(pattern: str) -> list[str]:
    """All strings a brace pattern denotes, in order (``a{1..2}b{x,y}`` -> a1bx, a1by, a2bx, a2by)."""
    _check_balanced(pattern, "{", "}")
    pieces = re.split(r"\{([^{}]*)\}", pattern)
    literals, groups = pieces[0::2], pieces[1::2]
    choices = [_brace_alternatives(pattern, body) for body in groups]
    expanded = []
    for combination in itertools.product(*choices):
        parts = [literals[0]]
        for choice, literal in zip(combination, literals[1:], strict=True):
            parts += [choice, literal]
        expanded.append("".join(parts))
    return expanded


def _folder_of(url: str) -> str:
    parts = [p for p in url.split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"shard path {url!r} has no parent folder to name its modality; use root/<modality>/...")
    return parts[-2]


def expand_shard_pattern(pattern: str) -> dict[str, list[str]]:
    """Map each modality of a 4M shard pattern to its shard URLs (same shard order for every modality)."""
    if not pattern or not pattern.strip():
        raise ValueError("shard pattern is empty")
    _check_balanced(pattern, "[", "]")
    groups = re.findall(r"\[([^\[\]]*)\]", pattern)
    if len(groups) > 1:
        raise ValueError(f"shard pattern {pattern!r} has {len(groups)} [modality] groups; at most one is allowed")
    if not groups:
        urls = expand_braces(pattern)
        modality = _folder_of(urls[0])
        mixed = sorted({_folder_of(u) for u in urls} - {modality})
        if mixed:
            raise ValueError(
                f"shard pattern {pattern!r} spans folders {[modality, *mixed]}; list modalities with [a,b] instead"
            )
        return {modality: urls}
    modalities = [m.strip() for m in groups[0].split(",")]
    if any(not m or "/" in m or "{" in m or "}" in m for m in modalities):
        raise ValueError(f"shard pattern {pattern!r}: bad modality list [{groups[0]}]")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"shard pattern {pattern!r}: modality list [{groups[0]}] repeats a name")
    bracket = f"[{groups[0]}]"
    return {m: expand_braces(pattern.replace(bracket, m)) for m in modalities}
