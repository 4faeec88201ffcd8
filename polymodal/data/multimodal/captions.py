"""Captions in batches: one text picked per sample, then the batch's texts as token ids for a text tower."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from polymodal.data.multimodal.collate import Batch, Sample
from polymodal.data.multimodal.skips import SampleError
from polymodal.tokenizers.text.captions import CaptionEncoder


def _check_texts(value: Any, folder: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) for v in value):
        raise SampleError("bad_text", None, f"{folder}: expected a string or a non-empty list of strings")


def pick_text(value: Any, generator: torch.Generator, train: bool, folder: str = "caption") -> str:
    """One of a sample's texts: a string as it is; from a list, a random one in training and the first otherwise.
    Anything else is a bad sample (:class:`SampleError` ``bad_text``)."""
    _check_texts(value, folder)
    if isinstance(value, str):
        return value
    return value[int(torch.randint(len(value), (), generator=generator))] if train else value[0]


def pick_text_pair(
    value: Any, twin: Any, generator: torch.Generator, train: bool, folder: str = "caption"
) -> tuple[str, str]:
    """One text of a sample and the twin's text of the same phrasing (the same position in the twin's list, which
    must be as long); as :func:`pick_text` otherwise."""
    _check_texts(value, folder)
    _check_texts(twin, f"twin_{folder}")
    if isinstance(value, str) != isinstance(twin, str) or (not isinstance(value, str) and len(value) != len(twin)):
        raise SampleError("bad_text", None, f"twin_{folder}: expected as many texts as {folder}")
    if isinstance(value, str):
        return value, twin
    index = int(torch.randint(len(value), (), generator=generator)) if train else 0
    return value[index], twin[index]


class CollateCaptions:
    """Collates with ``collate``, then adds the tokens of ``batch[key]`` (texts; None where absent) as
    ``<key>_ids`` int64 [B, L], ``<key>_mask`` bool [B, L] and ``<key>_eot`` int64 [B] (see :class:`CaptionEncoder`)."""

    def __init__(self, collate: Callable[[list[Sample]], Batch], encoder: CaptionEncoder, key: str = "caption") -> None:
        self.collate = collate
        self.encoder = encoder
        self.key = key

    def __call__(self, samples: list[Sample]) -> Batch:
        batch = self.collate(samples)
        tokens = self.encoder(batch[self.key])
        return {**batch, **{f"{self.key}_{name}": value for name, value in tokens.items()}}
