"""T5 span corruption of a batch of sequences, vectorised (no per-row Python).

Given which tokens are dropped, every maximal run of dropped tokens is one span. Span j (j = 1, 2, ...) is
replaced in the input by the sentinel ``[S_j]``; the target lists ``[S_j]`` followed by the span's tokens for
every span, then a closing ``[S_{c+1}]`` (c spans). Sentinels start at ``[S_1]``; ``[S_0]`` is never used (4M).
With ``ids = [100, 101, 102, 103]`` and ``dropped = [0, 1, 1, 0]``: input ``[100, S_1, 103]``, target
``[S_1, 101, 102, S_2]``.

How it is vectorised: a span starts where a token is dropped and its left neighbour is not; the cumulative sum
of the starts numbers the spans; the cumulative sum of "emits into the input" (kept, or a span start) gives each
input element its position; the cumulative sum of "emits into the target" (1 per dropped token, +1 for a span
start's sentinel) gives each target element its position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SpanCorruption:
    """Input and target sequences of a batch of span-corrupted rows, PAD (0) after each row's length.

    ``input_source[b, i]`` is the position in the original row of input element i, or -1 where it is a sentinel
    (``seq_emb`` uses it to gather embedding rows). ``sentinel_positions[b, j]`` is where ``[S_{j+1}]`` sits in the
    target, for j < ``num_spans + 1`` (the last one is the closing sentinel); later columns hold a large value.
    """

    inputs: torch.Tensor  # (B, T) int64
    input_lengths: torch.Tensor  # (B,)
    input_source: torch.Tensor  # (B, T) int64, -1 at sentinels and padding
    targets: torch.Tensor  # (B, max_target_length(T)) int64
    target_lengths: torch.Tensor  # (B,)
    num_spans: torch.Tensor  # (B,)
    sentinel_positions: torch.Tensor  # (B, max_spans(T) + 1) int64


def max_spans(length: int) -> int:
    """Most spans a sequence of ``length`` tokens can have (alternating dropped/kept)."""
    return (length + 1) // 2


def max_target_length(length: int) -> int:
    """Longest target of a ``length``-token sequence: every token, a sentinel per span and the closing one."""
    return length + max_spans(length) + 1


def span_starts(dropped: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: dropped tokens whose left neighbour is kept (or that are first)."""
    return dropped & ~F.pad(dropped[:, :-1], (1, 0), value=False)


def input_lengths(dropped: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) length of each row's corrupted input: kept tokens plus one sentinel per span; dropped padding is not
    a span."""
    dropped = dropped & valid
    return ((valid & ~dropped) | span_starts(dropped)).sum(1)


def span_corrupt(
    ids: torch.Tensor, valid: torch.Tensor, dropped: torch.Tensor, first_sentinel_id: int
) -> SpanCorruption:
    """Span-corrupt each row of ``ids`` (B, T) over its ``valid`` tokens; ``dropped`` marks the masked ones.

    ``valid`` must be a prefix of each row (right padding); dropped tokens outside it are ignored.
    ``first_sentinel_id`` is the id of ``[S_0]`` (sentinel j has id ``first_sentinel_id + j``).
    """
    batch_size, length = ids.shape
    dropped = dropped & valid
    kept = valid & ~dropped
    starts = span_starts(dropped)
    span_index = torch.cumsum(starts, 1)  # 1-based span number at (and after) each span start
    sentinels = first_sentinel_id + span_index

    emits_input = kept | starts
    input_position = torch.where(emits_input, torch.cumsum(emits_input, 1) - 1, length)  # column T: discarded
    inputs = ids.new_zeros(batch_size, length + 1)
    inputs.scatter_(1, input_position, torch.where(kept, ids, sentinels))
    source = torch.where(kept, torch.arange(length, device=ids.device), -1)
    input_source = torch.full((batch_size, length + 1), -1, dtype=torch.long, device=ids.device)
    input_source.scatter_(1, input_position, source)

    target_room = max_target_length(length)
    token_position = torch.cumsum(dropped.long() * (1 + starts.long()), 1) - 1
    num_spans = starts.sum(1)
    target_lengths = dropped.sum(1) + num_spans + 1
    targets = ids.new_zeros(batch_size, target_room + 1)
    targets.scatter_(1, torch.where(dropped, token_position, target_room), ids)
    targets.scatter_(1, torch.where(starts, token_position - 1, target_room), sentinels)
    targets.scatter_(1, (target_lengths - 1)[:, None], (first_sentinel_id + num_spans + 1)[:, None])

    sentinel_columns = max_spans(length) + 1
    sentinel_positions = torch.full(
        (batch_size, sentinel_columns + 1), target_room, dtype=torch.long, device=ids.device
    )
    sentinel_positions.scatter_(1, torch.where(starts, span_index - 1, sentinel_columns), token_position - 1)
    sentinel_positions.scatter_(1, num_spans[:, None], (target_lengths - 1)[:, None])
    return SpanCorruption(
        inputs=inputs[:, :length],
        input_lengths=emits_input.sum(1),
        input_source=input_source[:, :length],
        targets=targets[:, :target_room],
        target_lengths=target_lengths,
        num_spans=num_spans,
        sentinel_positions=sentinel_positions[:, :sentinel_columns],
    )


def target_window(
    corruption: SpanCorruption, budget: torch.Tensor, choice: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of each target kept under a token ``budget`` (B,), cut at a sentinel (4M's rule).

    A target no longer than its budget is kept whole. Otherwise, with s the target's sentinel positions, pick
    c uniformly in ``0 .. max(1, len(s) - 1) - 1`` (never the closing sentinel when there are others) from
    ``choice`` (B,) uniforms in [0, 1): if ``budget`` tokens fit from ``s[c]``, keep ``target[s[c] : s[c] +
    budget]``, else keep the tail from the first sentinel within ``budget`` of the end. A kept window is empty
    (budget 0) or starts with a sentinel.

    Returns:
        (start, length), each (B,) int64: the window is ``targets[b, start : start + length]``.
    """
    lengths = corruption.target_lengths
    num_sentinels = corruption.num_spans + 1
    pick_from = torch.clamp(num_sentinels - 1, min=1)
    picked = torch.minimum((choice * pick_from).long(), pick_from - 1)
    picked_position = corruption.sentinel_positions.gather(1, picked[:, None]).squeeze(1)
    fits_from_picked = lengths - picked_position >= budget
    columns = torch.arange(corruption.sentinel_positions.shape[1], device=lengths.device)
    in_tail = (columns < num_sentinels[:, None]) & (corruption.sentinel_positions >= (lengths - budget)[:, None])
    first_in_tail = torch.where(in_tail, corruption.sentinel_positions, lengths.max() + 1).min(1).values
    too_long = lengths > budget
    start = torch.where(too_long, torch.where(fits_from_picked, picked_position, first_in_tail), 0)
    length = torch.where(too_long, torch.where(fits_from_picked, budget, lengths - first_in_tail), lengths)
    return start, length
