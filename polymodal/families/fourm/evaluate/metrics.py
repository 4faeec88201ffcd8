"""The task metrics of the 4M evaluation: depth errors, semseg IoU, the colour and shape words of captions
(see :mod:`polymodal.families.fourm.evaluate.tasks` for how each task uses them)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from polymodal.data.synth.scene import PALETTE, SHAPES
from polymodal.tokenizers.image.metrics import mean_iou
from polymodal.tokenizers.image.tokenizer import DEFAULT_MIN_DEPTH

COLOURS = tuple(PALETTE)
_WORD = re.compile(r"[a-z]+")


def abs_rel_error(predicted: Tensor, target: Tensor) -> float:
    """``mean(|predicted − target| / target)`` over every pixel (depths in metres, ``target > 0``)."""
    if predicted.shape != target.shape:
        raise ValueError(f"depth shapes differ: predicted {tuple(predicted.shape)}, target {tuple(target.shape)}")
    if bool((target <= 0).any()):
        raise ValueError("ground-truth depth must be > 0 everywhere")
    return ((predicted.float() - target.float()).abs() / target.float()).mean().item()


def log_rmse(predicted: Tensor, target: Tensor, min_depth: float = DEFAULT_MIN_DEPTH) -> float:
    """``sqrt(mean((log predicted − log target)²))`` over every pixel, depths clamped to ``min_depth`` first."""
    if predicted.shape != target.shape:
        raise ValueError(f"depth shapes differ: predicted {tuple(predicted.shape)}, target {tuple(target.shape)}")
    difference = predicted.float().clamp_min(min_depth).log() - target.float().clamp_min(min_depth).log()
    return difference.square().mean().sqrt().item()


def semseg_miou(predicted: Tensor, target: Tensor) -> float:
    """:func:`mean_iou` over all pixels of the batch, classes counted up to the largest id seen."""
    num_classes = int(max(predicted.max(), target.max())) + 1
    return mean_iou(predicted.long(), target.long(), num_classes).item()


def mentioned_attributes(text: str) -> tuple[set[str], set[str]]:
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
    wins = None
    if model is not None and baseline is not None:
        wins = model < baseline if lower_is_better else model > baseline
    better = "lower" if lower_is_better else "higher"
    return {"model": model, "baseline": baseline, "better": better, "model_wins": wins, **extra}
