"""Shape twins in a contrastive batch: each scene's twin (the scene with one object in another shape,
:mod:`polymodal.data.synth.twins`) becomes a pair of its own in the same batch, a hard negative of its scene.

:class:`FoldTwins` is a ``batch_transform`` of :class:`~polymodal.data.multimodal.data_module.MultimodalData` whose
``modalities`` hold ``twin_rgb`` and ``twin_caption`` (the data module gives a twin its scene's crop and the same
caption phrasing). It needs no randomness, so it changes nothing about resuming or the ranks' streams.
"""

from __future__ import annotations

import torch

from polymodal.data.multimodal.collate import Batch
from polymodal.data.multimodal.transforms import TWIN_PREFIX

SHARED_KEYS = ("sample_id", "source")  # a twin is its scene's sample, from its scene's source


class FoldTwins:
    """Batch transform: a batch of B scenes and their twins becomes a batch of 2B pairs.

    Every ``twin_<key>`` entry (``twin_rgb``, ``twin_caption_ids``, ``twin_rgb_present``, ...) is appended as rows
    ``B .. 2B - 1`` of ``<key>`` and removed; ``sample_id`` (and a mixture's ``source``) is repeated. Keys that
    describe only the scene, such as its labels, are dropped: they would be wrong for the twin. A batch whose every
    sample lacks a twin is left as it is (a validation source without twins); a batch where some do is an error, as
    an absent twin (zero pixels, an empty caption) would be a false pair.
    """

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        twinned = [key.removeprefix(TWIN_PREFIX) for key in batch if key.startswith(TWIN_PREFIX)]
        present = [batch[f"{TWIN_PREFIX}{key}"] for key in twinned if key.endswith("_present")]
        if not present or not any(flags.any() for flags in present):
            return {key: value for key, value in batch.items() if not key.startswith(TWIN_PREFIX)}
        if not all(flags.all() for flags in present):
            raise ValueError(
                "some samples of this batch have no shape twin; every training source needs twin_rgb and twin_caption"
            )
        missing = [key for key in twinned if key not in batch]
        if missing:
            raise ValueError(f"twins of {missing} have no scene value in the batch to be appended to")
        folded = {key: _appended(batch[key], batch[f"{TWIN_PREFIX}{key}"]) for key in twinned}
        shared = {key: _appended(batch[key], batch[key]) for key in SHARED_KEYS if key in batch}
        return {**folded, **shared}


def _appended(scene: torch.Tensor | list, twin: torch.Tensor | list) -> torch.Tensor | list:
    if isinstance(scene, torch.Tensor):
        return torch.cat([scene, twin])
    return list(scene) + list(twin)
