"""An exactly resumable, data-parallel loader over a map-style multimodal dataset.

Order. Epoch ``e`` visits sample ids in the order ``numpy.random.default_rng([seed, e]).permutation(N)``
(``arange(N)`` without shuffling). Global batch ``k`` of an epoch is positions ``[k*G, (k+1)*G)`` of that
order with ``G = batch_size * dp_world``; rank ``r`` takes rows ``[r*B, (r+1)*B)`` of it. The ``N mod G``
samples left at the end of an epoch are dropped for that epoch (the next permutation drops others).
The order is a pure function of ``(seed, epoch, G)``: it does not depend on the number of workers, and a
resume may change ``dp_world`` as long as ``G`` stays the same.

Skips. A sample whose read (or transform) raises :class:`SampleError` is replaced by the sample at the same
row of the following global batches: position ``p = k*G + j`` tries ``(p + m*G) mod N`` for ``m = 1, 2, ...``,
skipping positions inside global batch ``k``, until one loads. The rule uses only global positions, so the
result is the same for any number of workers or ranks, and rows of one global batch never pick the same
replacement unless the search wraps around the epoch end. A replacement is a sample of a later batch, so it
is seen twice in that epoch. The budget counts *distinct* bad sample ids (per reason in :meth:`skip_counts`),
not failed reads: a bad sample is read again every epoch, and as a candidate for several rows, but counts once.
More than ``error_budget`` of them raises :class:`ErrorBudgetExceeded` (one line: counts and first ids).

Batch randomness. An optional ``batch_transform(batch, generator)`` runs in the worker right after collation
(e.g. 4M's input/target masking) with a generator seeded from ``(seed, epoch, position of the batch's first
row)``: like the per-sample streams it does not depend on the worker count, and a resumed run redraws it exactly.

Resuming. :meth:`ResumableLoader.state_dict` is the position of the next global batch and the bad samples found
so far (JSON). Loading it only rebuilds the ``DataLoader`` iterator from that position; no earlier sample is read,
and the budget goes on counting from the saved bad samples.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from polymodal.data.multimodal.collate import Batch, Sample, collate_samples
from polymodal.data.multimodal.skips import BadSamples, SampleError
from polymodal.data.order import EpochCursor, EpochCursorLoader, EpochOrder, GlobalOrder

SampleTransform = Callable[[Sample, torch.Generator], Sample]
BatchTransform = Callable[[Batch, torch.Generator], Batch]
BAD_SAMPLES_KEY = "bad_samples"


class MapDataset(Protocol):
    """What the loader needs: a length and samples by id; a bad sample raises :class:`SampleError`."""

    def __len__(self) -> int: ...

    def __getitem__(self, sample_id: int) -> Sample: ...


@dataclass(frozen=True)
class SkipRecord:
    reason: str
    sample_id: int


@dataclass(frozen=True)
class _LoadedSample:
    sample: Sample
    skips: tuple[SkipRecord, ...]
    key: tuple[int, int]  # (epoch, position) of the row this sample fills


def sample_generator(seed: int, epoch: int, sample_id: int) -> torch.Generator:
    """The random stream of one sample's augmentation in one epoch: the same for any worker or rank count."""
    state = np.random.SeedSequence([seed, epoch, sample_id]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ChainedBatchTransforms:
    """Batch transforms applied in order, drawing one after the other from the batch's generator."""

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        for transform in self.transforms:
            batch = transform(batch, generator)
        return batch


def chain_batch_transforms(*transforms: BatchTransform | None) -> BatchTransform | None:
    """The given transforms (None ones skipped) as one; None when none is given."""
    present = [transform for transform in transforms if transform is not None]
    if len(present) < 2:
        return present[0] if present else None
    return ChainedBatchTransforms(present)


def batch_generator(seed: int, epoch: int, first_position: int) -> torch.Generator:
    """The random stream of one batch's ``batch_transform``, keyed by the global position of its first row (a
    fourth seed word keeps it apart from the per-sample streams)."""
    state = np.random.SeedSequence([seed, epoch, first_position, 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _PositionView:
    """Map-style view for the DataLoader: key ``(epoch, position)`` -> the (possibly replaced) sample."""

    def __init__(
        self,
        dataset: MapDataset,
        order: EpochOrder,
        global_batch: int,
        transform: SampleTransform | None,
        seed: int,
    ) -> None:
        self.dataset = dataset
        self.order = order
        self.global_batch = global_batch
        self.transform = transform
        self.seed = seed

    def _load(self, epoch: int, sample_id: int) -> Sample:
        sample = dict(self.dataset[sample_id])
        if self.transform is not None:
            sample = self.transform(sample, sample_generator(self.seed, epoch, sample_id))
        sample["sample_id"] = sample_id
        return sample

    def __getitem__(self, key: tuple[int, int]) -> _LoadedSample:
        epoch, position = key
        order = self.order.epoch_order(epoch)
        n, g = len(order), self.global_batch
        batch_start = position - position % g
        skips: list[SkipRecord] = []
        candidate = position
        for _ in range(n // math.gcd(g, n)):  # the cycle length of ``position + m*g (mod n)``
            if candidate == position or not batch_start <= candidate < batch_start + g:
                sample_id = int(order[candidate])
                try:
                    return _LoadedSample(self._load(epoch, sample_id), tuple(skips), key)
                except SampleError as error:
                    skips.append(SkipRecord(error.reason, sample_id))
            candidate = (candidate + g) % n
        raise RuntimeError(
            f"no loadable replacement for epoch {epoch} position {position}: all {len(skips)} candidates failed "
            f"(reasons {dict(Counter(s.reason for s in skips))}, sample ids {[s.sample_id for s in skips][:5]})"
        )


class _RankBatchSampler:
    """Yields this rank's keys for global batches from a start position onwards, across epochs, forever."""

    def __init__(self, start: EpochCursor, batch_size: int, dp_rank: int) -> None:
        self.start = replace(start)  # a copy: the loader's cursor moves on
        self.batch_size = batch_size
        self.dp_rank = dp_rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cursor = replace(self.start)
        while True:
            epoch, batch = cursor.take()
            first = batch * cursor.global_batch + self.dp_rank * self.batch_size
            yield [(epoch, p) for p in range(first, first + self.batch_size)]


class _CollateWithSkips:
    """Collates the samples with the user's function, then applies the batch transform; the skip records travel
    next to the batch."""

    def __init__(
        self, collate: Callable[[list[Sample]], Batch], batch_transform: BatchTransform | None, seed: int
    ) -> None:
        self.collate = collate
        self.batch_transform = batch_transform
        self.seed = seed

    def __call__(self, loaded: list[_LoadedSample]) -> tuple[Batch, tuple[SkipRecord, ...]]:
        samples = [item.sample for item in loaded]
        batch = self.collate(samples)
        batch["sample_id"] = torch.tensor([s["sample_id"] for s in samples], dtype=torch.int64)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch, batch_generator(self.seed, *loaded[0].key))
        return batch, tuple(skip for item in loaded for skip in item.skips)


def _init_worker(worker_id: int) -> None:
    """Decoding workers each get one intra-op thread so they do not oversubscribe the cores."""
    torch.set_num_threads(1)


class ResumableLoader(EpochCursorLoader):
    """Infinite iterator of collated batches for one data-parallel rank; ``batch["sample_id"]`` is int64 [B].

    ``collate`` turns a list of sample dicts into a batch dict (default: :func:`collate_samples`, which stacks
    tensors and keeps detections and captions as lists);
    ``transform(sample, generator)`` maps a sample dict to a sample dict in the worker and draws its randomness
    (crops, flips) from ``generator``, seeded from ``(seed, epoch, sample_id)`` (e.g. :class:`AlignedAugment`),
    so augmented batches do not depend on the number of workers or ranks either. ``batch_transform(batch,
    generator)`` maps each collated batch in the worker (see the module docstring for its seeding).
    ``multiprocessing_context`` is the workers' start method (``"spawn"``, ...; default: torch's).
    ``order`` replaces the shuffled permutation with any :class:`~polymodal.data.order.EpochOrder` of sample ids.
    """

    def __init__(
        self,
        dataset: MapDataset,
        batch_size: int,
        seed: int,
        dp_rank: int = 0,
        dp_world: int = 1,
        num_workers: int = 0,
        collate: Callable[[list[Sample]], Batch] = collate_samples,
        transform: SampleTransform | None = None,
        error_budget: int = 100,
        prefetch_factor: int = 2,
        shuffle: bool = True,
        batch_transform: BatchTransform | None = None,
        multiprocessing_context: str | None = None,
        order: EpochOrder | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dp_world < 1 or not 0 <= dp_rank < dp_world:
            raise ValueError(f"need 0 <= dp_rank < dp_world, got dp_rank={dp_rank}, dp_world={dp_world}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_world = dp_world
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.global_batch = batch_size * dp_world
        self.num_samples = len(dataset)
        self.order = order if order is not None else GlobalOrder(self.num_samples, seed, shuffle)
        if self.num_samples < self.global_batch:
            raise ValueError(
                f"dataset has {self.num_samples} samples, fewer than one global batch of {self.global_batch} "
                f"(batch_size={batch_size} x dp_world={dp_world})"
            )
        self._view = _PositionView(dataset, self.order, self.global_batch, transform, seed)
        self._collate = _CollateWithSkips(collate, batch_transform, seed)
        self.bad_samples = BadSamples(error_budget)
        self._raise_over_budget = True
        self.cursor = EpochCursor(self.order, self.global_batch, eager_rollover=True)
        self._iterator: Iterator[tuple[Batch, tuple[SkipRecord, ...]]] | None = None

    def _data_loader(self, view: _PositionView, sampler: Iterable[list[tuple[int, int]]]) -> DataLoader:
        workers = self.num_workers > 0
        return DataLoader(
            view,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self._collate,
            worker_init_fn=_init_worker if workers else None,
            prefetch_factor=self.prefetch_factor if workers else None,
            multiprocessing_context=self.multiprocessing_context if workers else None,
        )

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            sampler = _RankBatchSampler(self.cursor, self.batch_size, self.dp_rank)
            self._iterator = iter(self._data_loader(self._view, sampler))
        batch, skips = next(self._iterator)
        _record(self.bad_samples, skips, check=self._raise_over_budget)
        self.cursor.take()
        return batch

    def defer_budget_check(self) -> None:
        """Stop raising :class:`ErrorBudgetExceeded` from ``next()``: the caller asks :meth:`over_budget` itself.
        The trainer does, on every rank at once, so that all ranks checkpoint and stop together."""
        self._raise_over_budget = False

    def over_budget(self) -> str | None:
        """The one-line budget message once more distinct samples are bad than the budget, else None."""
        return self.bad_samples.message() if self.bad_samples.over_budget() else None

    def skip_counts(self) -> dict[str, int]:
        """Distinct bad samples per reason: those this rank found, plus those of the state it resumed from."""
        return self.bad_samples.counts()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position (the next batch is global batch ``batch_in_epoch`` of ``epoch``) and the bad sample
        ids by reason."""
        return {
            **self.cursor.state(),
            "seed": self.seed,
            "global_batch": self.global_batch,
            "num_samples": self.num_samples,
            BAD_SAMPLES_KEY: self.bad_samples.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the last batch taken by the loader (of any dp_world) that saved ``state``, with
        its bad samples (a state saved before they were kept has none)."""
        expected = {"seed": self.seed, "num_samples": self.num_samples, "global_batch": self.global_batch}
        self.cursor.restore(state, expected, "samples", self.batch_size, self.dp_world)
        self.bad_samples.load_state_dict(state.get(BAD_SAMPLES_KEY, {}))
        self._iterator = None  # dropping the iterator shuts its workers down; the next batch rebuilds it

    def val_batches(self, max_batches: int | None = None) -> Iterator[Batch]:
        """Evaluation batches: ids ``0, 1, 2, ...`` in order, global batches of ``G`` split over ranks as above.

        Every rank gets the same number of batches (a trailing partial global batch is dropped);
        ``max_batches`` caps it. Skips follow the training rule and are budgeted separately per call.
        """
        if max_batches is not None and max_batches < 0:
            raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")
        order = GlobalOrder(self.num_samples, self.seed, shuffle=False)
        count = order.batches_per_epoch(self.global_batch)
        if max_batches is not None:
            count = min(count, max_batches)
        first_row = self.dp_rank * self.batch_size
        keys = [[(0, k * self.global_batch + first_row + row) for row in range(self.batch_size)] for k in range(count)]
        view = _PositionView(self.dataset, order, self.global_batch, self._view.transform, self.seed)
        loader = self._data_loader(view, keys)
        # A separate generator, so the argument check above runs at call time rather than on the first next().
        return _budgeted(loader, BadSamples(self.bad_samples.budget))


def merge_rank_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One state for a checkpoint from every rank's :meth:`ResumableLoader.state_dict`: the (shared) position of
    the first, with the bad samples any rank found, so a resume on any number of ranks keeps counting them all."""
    merged = BadSamples(budget=0)
    for state in reversed(states):  # a sample found on several ranks keeps the first rank's reason
        merged.reasons.update(BadSamples.parse_state(state.get(BAD_SAMPLES_KEY, {})))
    return {**states[0], BAD_SAMPLES_KEY: merged.state_dict()}


def _record(bad_samples: BadSamples, skips: tuple[SkipRecord, ...], check: bool = True) -> None:
    for skip in skips:
        bad_samples.add(skip.reason, skip.sample_id)
    if check:
        bad_samples.check_budget()


def _budgeted(loader: DataLoader, bad_samples: BadSamples) -> Iterator[Batch]:
    for batch, skips in loader:
        _record(bad_samples, skips)
        yield batch
