"""Skipping bad samples: the error a dataset raises for one unusable sample, and the budget that counts them.

A dataset raises :class:`SampleError` for a sample it cannot produce (corrupt image, truncated or missing
member); the loader catches it, records it in a :class:`SkipCounter` and moves on. Once more samples than the
budget have been skipped the loader stops with :meth:`SkipCounter.message`, so a broken data set fails loudly
instead of silently training on a fraction of itself.
"""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger(__name__)


class SampleError(Exception):
    """One sample cannot be produced; ``reason`` is a short fixed tag (``"corrupt_image"``, ...)."""

    def __init__(self, reason: str, sample_id: int | None, detail: str) -> None:
        super().__init__(f"sample {sample_id} skipped ({reason}): {detail}")
        self.reason = reason
        self.sample_id = sample_id
        self.detail = detail

    def __reduce__(self) -> tuple[type[SampleError], tuple[str, int | None, str]]:
        return SampleError, (self.reason, self.sample_id, self.detail)  # crosses DataLoader worker boundaries


class SkipCounter:
    """Per-reason counts of skipped samples (or truncated shards) against a total budget."""

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"error budget must be >= 0, got {budget}")
        self.budget = budget
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, detail: str = "", count: int = 1) -> None:
        """Count ``count`` skips for ``reason`` and log them."""
        self.counts[reason] += count
        logger.warning("skipped %d (%s): %s [total %d of budget %d]", count, reason, detail, self.total, self.budget)

    def record(self, error: SampleError) -> None:
        self.add(error.reason, str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def over_budget(self) -> bool:
        return self.total > self.budget

    def message(self) -> str:
        reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts.items())) or "none"
        return f"skipped {self.total} samples (budget {self.budget}): {reasons}"
