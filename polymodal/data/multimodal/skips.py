"""Skipping bad samples: the error a dataset raises for one unusable sample, and the budgets that count them.

A dataset raises :class:`SampleError` for a sample it cannot produce (corrupt image, truncated or missing
member); the loader catches it, records the sample in its :class:`BadSamples` and moves on. The budget counts
*distinct* bad samples: a bad sample is visited again every epoch (and as a replacement candidate), but it is one
problem with the data. Once more distinct samples than the budget are bad the loader raises
:class:`ErrorBudgetExceeded`, so a broken data set fails loudly instead of silently training on a fraction of
itself. :class:`SkipCounter` counts events that happen once (truncated shard tars, found when indexing).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)
IDS_IN_MESSAGE = 5


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


class ErrorBudgetExceeded(RuntimeError):
    """More distinct samples are bad than the data error budget allows; the message is one line."""


class BadSamples:
    """The distinct bad sample ids with the reason each was first skipped for, against a budget.

    Its :meth:`state_dict` (``{reason: sorted ids}``, JSON-able) goes into the loader's state, so a resumed run
    keeps counting the samples found before instead of starting from zero.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"error budget must be >= 0, got {budget}")
        self.budget = budget
        self.reasons: dict[int, str] = {}  # sample id -> reason, in the order they were found

    def add(self, reason: str, sample_id: int) -> None:
        """Record one skip of ``sample_id``; only the first one of a sample is logged and counted."""
        if sample_id in self.reasons:
            return
        self.reasons[sample_id] = reason
        logger.warning(
            "skipped sample %d (%s) [%d distinct bad samples, budget %d]", sample_id, reason, len(self), self.budget
        )

    def over_budget(self) -> bool:
        return len(self) > self.budget

    def check_budget(self) -> None:
        """Raise :class:`ErrorBudgetExceeded` once more distinct samples are bad than the budget."""
        if self.over_budget():
            raise ErrorBudgetExceeded(self.message())

    def __len__(self) -> int:
        return len(self.reasons)

    def counts(self) -> dict[str, int]:
        """Distinct bad samples per reason."""
        return dict(Counter(self.reasons.values()))

    def message(self) -> str:
        reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts().items())) or "none"
        first = list(self.reasons)[:IDS_IN_MESSAGE]
        return (
            f"data error budget exceeded: {len(self)} distinct bad samples, budget {self.budget} ({reasons}); "
            f"first bad sample ids {first}"
        )

    def state_dict(self) -> dict[str, list[int]]:
        ids_by_reason: dict[str, list[int]] = {}
        for sample_id, reason in self.reasons.items():
            ids_by_reason.setdefault(reason, []).append(sample_id)
        return {reason: sorted(ids) for reason, ids in sorted(ids_by_reason.items())}

    def load_state_dict(self, ids_by_reason: Mapping[str, Sequence[int]]) -> None:
        """Replace the recorded samples by a saved :meth:`state_dict`."""
        self.reasons = self.parse_state(ids_by_reason)

    @staticmethod
    def parse_state(ids_by_reason: Mapping[str, Sequence[int]]) -> dict[int, str]:
        """A saved :meth:`state_dict` as ``{sample id: reason}``."""
        return {int(i): reason for reason, ids in ids_by_reason.items() for i in ids}
