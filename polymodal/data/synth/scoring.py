"""Scoring what a model says or draws about synthetic scenes, beside a baseline: the colour and shape words of
captions, the shapes of a segmentation map, and the report entries and table every family's evaluation shares.

Colour and shape scores pool over scenes: precision = Σ |mentioned ∩ present| / Σ |mentioned| and
recall = Σ |mentioned ∩ present| / Σ |present|, sums over scenes of distinct words. A scene's first caption names
the colour and shape of every visible object, so its words are the scene's ground truth.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polymodal.data.synth.scene import PALETTE, SHAPES

COLOURS = tuple(PALETTE)
ATTRIBUTE_KINDS = ("colour", "shape")
_WORD = re.compile(r"[a-z]+")

Attributes = tuple[set[str], set[str]]  # (colours, shapes)


def mentioned_attributes(text: str) -> Attributes:
    """The distinct colour words and shape words (singular; ``"cubes"`` counts as ``cube``) of a caption."""
    colours, shapes = set(), set()
    for word in _WORD.findall(text.lower()):
        if word in PALETTE:
            colours.add(word)
        elif word in SHAPES:
            shapes.add(word)
        elif word.endswith("s") and word[:-1] in SHAPES:
            shapes.add(word[:-1])
    return colours, shapes


def attribute_scores(mentioned: Sequence[set[str]], present: Sequence[set[str]]) -> dict[str, float | None]:
    """Pooled precision and recall of per-scene word sets (module docstring); None where nothing is counted."""
    if len(mentioned) != len(present):
        raise ValueError(f"{len(mentioned)} mentioned sets for {len(present)} scenes")
    hits = sum(len(m & p) for m, p in zip(mentioned, present, strict=True))
    said, there = sum(len(m) for m in mentioned), sum(len(p) for p in present)
    return {"precision": hits / said if said else None, "recall": hits / there if there else None}


def shapes_present(semseg: Tensor, min_fraction: float) -> list[set[str]]:
    """Per map of ``semseg`` [B, H, W]: the shapes whose class (id = index in :data:`SHAPES` + 1) covers at least
    ``min_fraction`` of the pixels."""
    if semseg.ndim != 3:
        raise ValueError(f"semseg maps must be [B, H, W], got shape {tuple(semseg.shape)}")
    counts = torch.stack([torch.bincount(m.flatten().long(), minlength=len(SHAPES) + 1) for m in semseg])
    present = counts[:, 1 : len(SHAPES) + 1] >= min_fraction * semseg[0].numel()
    return [{shape for shape, there in zip(SHAPES, row.tolist(), strict=True) if there} for row in present]


def most_frequent(sets: Sequence[set[str]], vocabulary: Sequence[str]) -> str:
    """The word of ``vocabulary`` that occurs in most of ``sets`` (ties: vocabulary order)."""
    counts = Counter(word for words in sets for word in words)
    return max(vocabulary, key=lambda word: (counts[word], -vocabulary.index(word)))


def metric_entry(model: float | None, baseline: float | None, lower_is_better: bool, **extra: Any) -> dict[str, Any]:
    """One report line: the model's score, the baseline's, which is better and whether the model wins; ``extra``
    numbers (references) are printed beside them by :func:`format_scores`."""
    wins = None
    if model is not None and baseline is not None:
        wins = model < baseline if lower_is_better else model > baseline
    better = "lower" if lower_is_better else "higher"
    return {"model": model, "baseline": baseline, "better": better, "model_wins": wins, **extra}


def caption_task(generated: Sequence[str], captions: Sequence[str], training_captions: Sequence[str]) -> dict[str, Any]:
    """Colour and shape precision and recall of ``generated`` captions against the scenes' ``captions``, beside the
    constant caption ``"a <colour> <shape>"`` naming the colour and the shape present in most
    ``training_captions``."""
    present = [mentioned_attributes(text) for text in captions]
    said = [mentioned_attributes(text) for text in generated]
    trained = [mentioned_attributes(text) for text in training_captions]
    constant = f"a {most_frequent([c for c, _ in trained], COLOURS)} {most_frequent([s for _, s in trained], SHAPES)}"
    baseline = mentioned_attributes(constant)
    task: dict[str, Any] = {"baseline": f"the constant caption {constant!r}"}
    for index, kind in enumerate(ATTRIBUTE_KINDS):
        model_scores = attribute_scores([s[index] for s in said], [p[index] for p in present])
        baseline_scores = attribute_scores([baseline[index]] * len(present), [p[index] for p in present])
        for score in ("precision", "recall"):
            task[f"{kind}_{score}"] = metric_entry(model_scores[score], baseline_scores[score], False)
    return task


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_scores(title: str, tasks: Mapping[str, Mapping[str, Any]], skipped: Mapping[str, str]) -> str:
    """A table under ``title``: one line per task metric (:func:`metric_entry`), model vs baseline and which is
    better, its extra numbers in brackets; each task's ``baseline`` description; then the ``skipped`` tasks."""
    width = max([13, *map(len, tasks)])
    lines = [title, f"  {'task':<{width}} {'metric (which is better)':<32} {'model':>8} {'baseline':>9}  winner"]
    for task, result in tasks.items():
        for metric, entry in result.items():
            if not isinstance(entry, dict):
                continue
            verdict = {True: "model", False: "baseline", None: "n/a"}[entry["model_wins"]]
            if entry["model"] is not None and entry["model"] == entry["baseline"]:
                verdict = "tie"
            name = f"{metric} ({entry['better']})"
            numbers = f"{_number(entry['model']):>8} {_number(entry['baseline']):>9}"
            line = f"  {task:<{width}} {name:<32} {numbers}  {verdict}"
            extra = [f"{key.replace('_', ' ')}: {_number(value)}" for key, value in entry.items() if key not in _ENTRY]
            lines.append(line + (f"  ({', '.join(extra)})" if extra else ""))
        lines.append(f"  {'':<{width}} baseline: {result['baseline']}")
    lines += [f"  skipped {task}: {reason}" for task, reason in skipped.items()]
    return "\n".join(lines)


_ENTRY = {"model", "baseline", "better", "model_wins"}
