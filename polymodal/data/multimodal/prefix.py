"""Per-sample prefix lengths for prefix-causal (AIM) pre-training, drawn as batch transforms of the loader.

:class:`RandomPrefixLengths` draws each sample's prefix length K uniformly from ``[min_length, max_length]``
(default ``[1, N - 1]``: at least one bidirectional patch and at least one scored target). It is a ``batch_transform``
of :class:`~polymodal.data.multimodal.loader.ResumableLoader`, which hands it a generator seeded from ``(seed,
epoch, global position of the batch's first row)``: the position already tells the ranks apart (rank r's rows of a
global batch start at ``r * batch_size``), so ranks draw different streams, the worker count changes nothing, and a
resumed run redraws exactly the lengths it would have drawn. (Upstream drew them per sample from one generator per
process, forked unchanged into every rank and worker: every rank repeated the same stream.)

:class:`FixedPrefixLengths` is the evaluation rule: one length for every sample, no randomness.
"""

from __future__ import annotations

import torch

from polymodal.data.multimodal.collate import Batch

PREFIX_KEY = "prefix_lengths"


def _batch_size(batch: Batch) -> int:
    return int(batch["sample_id"].shape[0])


class RandomPrefixLengths:
    """Batch transform: ``batch[key]`` = int64 ``[B]`` prefix lengths, uniform in ``[min_length, max_length]``.

    Args:
        num_patches: N, the patches per image.
        min_length, max_length: the inclusive range (default ``[1, N - 1]``).
        key: where the lengths are written.
    """

    def __init__(
        self, num_patches: int, min_length: int = 1, max_length: int | None = None, key: str = PREFIX_KEY
    ) -> None:
        max_length = num_patches - 1 if max_length is None else max_length
        if not 0 <= min_length <= max_length <= num_patches:
            raise ValueError(
                f"need 0 <= min_length <= max_length <= num_patches, got {min_length}, {max_length}, {num_patches}"
            )
        self.min_length, self.max_length, self.key = min_length, max_length, key

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        lengths = torch.randint(self.min_length, self.max_length + 1, (_batch_size(batch),), generator=generator)
        return {**batch, self.key: lengths}


class FixedPrefixLengths:
    """Batch transform: ``batch[key]`` = ``length`` for every sample (the deterministic evaluation rule).

    ``length=1`` scores every next-patch target (a causal mask behind one bidirectional patch); ``length=N`` is the
    fully bidirectional mask, which leaves nothing to score.
    """

    def __init__(self, length: int, key: str = PREFIX_KEY) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length, self.key = length, key

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        return {**batch, self.key: torch.full((_batch_size(batch),), self.length, dtype=torch.int64)}
