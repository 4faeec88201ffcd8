"""Token sampling for generation: top-k / top-p filtering, temperature, and draws from a ``torch.Generator``.

Shared by every generating model (the language model's ``generate``, 4M's MaskGIT/ROAR/autoregressive sampler).
As 4M: the filters act on the raw logits, then the temperature divides them; a temperature of (about) 0 takes the
argmax and reports probability 1 for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ZERO_TEMPERATURE = 1e-10


def top_k_count(top_k: int | float, vocab_size: int) -> int:
    """How many logits top-k keeps: an int ``k``, or a float fraction of the vocabulary; 0 = all."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 or a float fraction of the vocabulary, got {top_k!r}")
    if top_k == 0:
        return vocab_size
    count = min(top_k, vocab_size) if isinstance(top_k, int) else min(int(top_k * vocab_size), vocab_size)
    if count < 1:
        raise ValueError(f"top_k={top_k} keeps no token of a {vocab_size}-token vocabulary")
    return count


def filter_logits(logits: Tensor, top_k: int | float = 0, top_p: float = 0.0) -> Tensor:
    """``[N, V]`` logits with the filtered-out entries set to ``-inf`` (a new tensor).

    top-k keeps the logits >= the k-th largest (ties included); top-p (nucleus) keeps, in decreasing order, the
    tokens until the cumulative probability exceeds ``top_p``, the one crossing it included, and always the first.
    """
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must lie in [0, 1] (0: off), got {top_p!r}")
    logits = logits.clone()
    count = top_k_count(top_k, logits.shape[-1])
    if count < logits.shape[-1]:
        kth = torch.topk(logits, count, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p > 0.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def sample_tokens(
    logits: Tensor,
    temperature: float,
    generator: torch.Generator,
    top_k: int | float = 0,
    top_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``(samples [N], probabilities [N])`` from ``[N, V]`` logits: filter, divide by ``temperature``, draw.

    The draw uses ``generator`` (on its own device; results come back on the logits' device).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if abs(temperature) <= ZERO_TEMPERATURE:
        samples = logits.argmax(dim=-1)
        return samples, torch.ones(samples.shape, dtype=torch.float32, device=logits.device)
    probs = F.softmax(filter_logits(logits.float(), top_k, top_p) / temperature, dim=-1)
    samples = torch.multinomial(probs.to(generator.device), 1, generator=generator).to(logits.device)
    return samples[:, 0], probs.gather(-1, samples)[:, 0]
