"""The global sample order every resumable loader follows.

Epoch ``e`` visits items in the order ``numpy.random.default_rng([seed, e]).permutation(N)`` (``arange(N)``
without shuffling). Global batch ``k`` is positions ``[k*G, (k+1)*G)`` of it, ``G = batch_size * dp_world``, and
rank ``r`` takes rows ``[r*B, (r+1)*B)``. The order is a pure function of ``(seed, epoch, G)``: a loader's state is
just ``(epoch, batch)``, and a resume may change ``dp_world`` as long as ``G`` is unchanged.
"""

from __future__ import annotations

import numpy as np


class GlobalOrder:
    """The sample order of every epoch, shared by all ranks (see module docstring)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self._cached_epoch = -1
        self._cached_order = np.empty(0, dtype=np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample ids of ``epoch`` in visiting order (the last one is cached)."""
        if epoch != self._cached_epoch:
            if self.shuffle:
                self._cached_order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            else:
                self._cached_order = np.arange(self.num_samples, dtype=np.int64)
            self._cached_epoch = epoch
        return self._cached_order

    def batches_per_epoch(self, global_batch: int) -> int:
        return self.num_samples // global_batch

    def rank_ids(self, epoch: int, batch_in_epoch: int, batch_size: int, dp_rank: int, dp_world: int) -> np.ndarray:
        """Sample ids that rank ``dp_rank`` gets in global batch ``batch_in_epoch`` of ``epoch``."""
        start = batch_in_epoch * batch_size * dp_world + dp_rank * batch_size
        return self.epoch_order(epoch)[start : start + batch_size]
