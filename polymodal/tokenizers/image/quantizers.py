"""Quantizers that turn a continuous latent grid into discrete codes, for image VQ tokenizers.

Both implement :class:`Quantizer`: ``forward(z [B, dim, h, w])`` returns the quantized latent (with
straight-through gradients to ``z``), the codes ``[B, h, w]``, an auxiliary loss and the per-code usage
counts of the batch; ``codes_to_latent`` maps codes back to the quantized latent.

* :class:`VectorQuantizer` — nearest neighbour in a codebook (VQ-VAE). By default codes and latents
  are l2-normalised (nearest = highest cosine similarity) so the codebook cannot collapse in scale,
  the codebook follows an exponential moving average (EMA) of its assigned latents, and codes whose
  EMA usage drops below a threshold are restarted from latents of the current batch.
* :class:`FSQ` — finite scalar quantization (Mentzer et al. 2023): every channel is bounded and
  rounded to a few levels; the implicit codebook is the grid of all level combinations, so there is
  nothing to learn and nothing to collapse.

Distributed training: when ``torch.distributed`` is initialized, :class:`VectorQuantizer` all-reduces
(sums) its per-code batch counts and latent sums across all ranks of the default process group before
the EMA update, and rank 0 broadcasts the latents used for dead-code restarts. Ranks that start from
the same codebook (same seed, or the same checkpoint) therefore keep identical codebooks. Every rank
must call ``forward`` in training mode the same number of times.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# Floor for EMA counts when dividing EMA sums by them (a code unused for very long decays towards 0/0).
_MIN_EMA_COUNT = 1e-6
# A learned codebook (ema_decay=None) still needs an EMA of code usage to find dead codes.
_USAGE_DECAY_FOR_LEARNED_CODEBOOK = 0.99
# FSQ bounds each channel slightly beyond its outermost levels so those levels are reached by finite inputs.
_FSQ_BOUND_MARGIN = 1e-3


@dataclass
class QuantizerOutput:
    latent: Tensor  # [B, dim, h, w] quantized, straight-through gradients to z
    codes: Tensor  # long [B, h, w] in [0, codebook_size)
    loss: Tensor  # scalar auxiliary loss (commitment / codebook; 0 for FSQ)
    usage: Tensor  # float [codebook_size] counts of each code in this (local) batch


def straight_through(quantized: Tensor, source: Tensor) -> Tensor:
    """Exactly the value of ``quantized``, with the identity as gradient w.r.t. ``source``."""
    return quantized + (source - source.detach())


def codebook_perplexity(usage: Tensor) -> Tensor:
    """``exp(entropy)`` of the code usage distribution: 1 when one code is used, codebook_size when uniform."""
    if usage.ndim != 1:
        raise ValueError(f"usage must be a 1-D tensor of per-code counts, got shape {tuple(usage.shape)}")
    if bool((usage < 0).any()):
        raise ValueError("usage counts must be non-negative")
    total = usage.sum()
    if total <= 0:
        raise ValueError("usage counts sum to zero: no code was used, perplexity is undefined")
    probabilities = usage.double() / total
    return torch.special.entr(probabilities).sum().exp().to(torch.float32)


class Quantizer(nn.Module, abc.ABC):
    """Maps a latent grid ``[B, dim, h, w]`` to codes in ``[0, codebook_size)`` and back."""

    codebook_size: int
    dim: int

    @abc.abstractmethod
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` of shape ``[B, dim, h, w]``."""

    @abc.abstractmethod
    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """The quantized latent ``[B, dim, h, w]`` of integer ``codes`` ``[B, h, w]``."""

    @abc.abstractmethod
    def assignment_space(self, z: Tensor) -> Tensor:
        """``z`` ``[B, dim, h, w]`` where each position's code is the one whose :meth:`codes_to_latent` is nearest
        (Euclidean): how far a position is from a tie between two codes is measured here."""

    def _check_latent(self, z: Tensor) -> None:
        name = type(self).__name__
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"{name} expects a latent z of shape [B, {self.dim}, h, w], got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"{name} expects a floating-point latent z, got dtype {z.dtype}")
        if z.numel() == 0:
            raise ValueError(f"{name} got an empty latent z of shape {tuple(z.shape)}")

    def _check_codes(self, codes: Tensor) -> None:
        name = type(self).__name__
        if codes.ndim != 3:
            raise ValueError(f"{name} expects codes of shape [B, h, w], got {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"{name} expects integer codes, got dtype {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"{name} codes must lie in [0, {self.codebook_size}), "
                f"got values from {int(codes.min())} to {int(codes.max())}"
            )

    def _usage(self, codes: Tensor) -> Tensor:
        """Assignments per code, ``[codebook_size]`` floats (exact integers). An index-add, not ``bincount``: its shape
        does not depend on the codes' values, so the forward also runs on fake tensors (as FLOP counting does)."""
        flat = codes.flatten()
        counts = torch.zeros(self.codebook_size, device=codes.device)
        return counts.index_add_(0, flat, torch.ones(flat.shape, device=codes.device))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantizer with an EMA or learned codebook and dead-code restarts.

    Loss: ``commitment * mse(z, sg(q))``, plus the codebook loss ``mse(q, sg(z))`` when the codebook is
    learned by gradient (``ema_decay=None``). With ``l2_normalize`` both are computed on unit vectors.

    EMA update (training mode, after the lookup), with ``n_k`` the batch count and ``s_k`` the sum of the
    batch latents assigned to code ``k`` (summed over ranks)::

        count_k <- decay * count_k + (1 - decay) * n_k
        sum_k   <- decay * sum_k   + (1 - decay) * s_k
        code_k  <- sum_k / max(count_k, 1e-6)

    Dead codes: codes with ``count_k < dead_code_threshold`` (an EMA of assignments per step, so pick a
    threshold below ``latents per batch / codebook_size``) are replaced by random latents of the current
    batch, with ``count_k = threshold`` and ``sum_k = threshold * code_k``. ``dead_code_threshold=0``
    disables restarts.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        l2_normalize: bool = True,
        ema_decay: float | None = 0.99,
        commitment: float = 0.25,
        dead_code_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None for a learned codebook, got {ema_decay}")
        if commitment < 0:
            raise ValueError(f"commitment must be >= 0, got {commitment}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.l2_normalize = l2_normalize
        self.ema_decay = ema_decay
        self.commitment = commitment
        self.dead_code_threshold = dead_code_threshold

        initial_codebook = self._normalize(torch.randn(codebook_size, dim))
        if ema_decay is None:
            self.embedding = nn.Parameter(initial_codebook)
        else:
            self.register_buffer("embedding", initial_codebook)
            self.register_buffer("ema_sum", initial_codebook.clone())
        self.register_buffer("ema_count", torch.ones(codebook_size))

    @property
    def usage_decay(self) -> float:
        return _USAGE_DECAY_FOR_LEARNED_CODEBOOK if self.ema_decay is None else self.ema_decay

    @property
    def codebook(self) -> Tensor:
        """The code vectors ``[codebook_size, dim]`` as used for lookup (unit norm when ``l2_normalize``)."""
        return self._normalize(self.embedding)

    def _normalize(self, vectors: Tensor) -> Tensor:
        return F.normalize(vectors, dim=-1) if self.l2_normalize else vectors

    def nearest_codes(self, flat_latents: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``flat_latents`` ``[N, dim]`` (already normalized)."""
        codebook = self.codebook.detach().float()
        if self.l2_normalize:
            return (flat_latents @ codebook.T).argmax(dim=1)
        # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2, and ||z||^2 does not change the argmin.
        return (codebook.square().sum(dim=1) - 2 * flat_latents @ codebook.T).argmin(dim=1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        self._check_latent(z)
        batch, _, height, width = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat_with_grad = self._normalize(z.float().permute(0, 2, 3, 1).reshape(-1, self.dim))
            flat = flat_with_grad.detach()
            flat_codes = self.nearest_codes(flat)
            # Gather rows before normalizing, so autograd keeps no reference to the whole codebook
            # and the in-place restarts below do not invalidate the backward pass.
            quantized = self._normalize(self.embedding[flat_codes].float())
            loss = self.commitment * F.mse_loss(flat_with_grad, quantized.detach())
            if self.ema_decay is None:
                loss = loss + F.mse_loss(quantized, flat)
            if self.training:
                self._update_codebook(flat, flat_codes)
        codes = flat_codes.view(batch, height, width)
        quantized_grid = quantized.detach().view(batch, height, width, self.dim).permute(0, 3, 1, 2)
        return QuantizerOutput(
            latent=straight_through(quantized_grid.to(z.dtype), z),
            codes=codes,
            loss=loss,
            usage=self._usage(codes),
        )

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        self._check_codes(codes)
        return self.codebook[codes.long()].permute(0, 3, 1, 2)

    def assignment_space(self, z: Tensor) -> Tensor:
        self._check_latent(z)
        return self._normalize(z.float().movedim(1, -1)).movedim(-1, 1)

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, flat_codes: Tensor) -> None:
        counts = self._usage(flat_codes)
        if self.ema_decay is None:
            statistics = counts.unsqueeze(1)
        else:
            sums = torch.zeros(self.codebook_size, self.dim, device=flat.device).index_add_(0, flat_codes, flat)
            statistics = torch.cat([counts.unsqueeze(1), sums], dim=1)
        if _distributed():
            dist.all_reduce(statistics)
        decay = self.usage_decay
        self.ema_count.mul_(decay).add_(statistics[:, 0], alpha=1 - decay)
        if self.ema_decay is not None:
            self.ema_sum.mul_(decay).add_(statistics[:, 1:], alpha=1 - decay)
            self.embedding.copy_(self.ema_sum / self.ema_count.clamp_min(_MIN_EMA_COUNT).unsqueeze(1))
        self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        dead = self.ema_count < self.dead_code_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        num_latents = flat.shape[0]
        if num_dead <= num_latents:
            picks = torch.randperm(num_latents, device=flat.device)[:num_dead]
        else:
            picks = torch.randint(num_latents, (num_dead,), device=flat.device)
        replacements = flat[picks].contiguous()
        if _distributed():
            dist.broadcast(replacements, src=0)
        self.embedding[dead] = replacements.to(self.embedding.dtype)
        self.ema_count[dead] = self.dead_code_threshold
        if self.ema_decay is not None:
            self.ema_sum[dead] = replacements * self.dead_code_threshold


class FSQ(Quantizer):
    """Finite scalar quantization: channel ``i`` is bounded by tanh and rounded to ``levels[i]`` values.

    An odd level count ``L`` gives the integers ``-(L-1)/2 .. (L-1)/2``; an even one gives ``-L/2 .. L/2-1``
    (the bound is shifted by half a step so that ``z = 0`` still maps to level 0). Values are then scaled
    by ``1 / (L // 2)`` into ``[-1, 1]``. The code is the mixed-radix number of the per-channel level
    indices, channel 0 being the least significant digit.
    """

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        if not levels or any(not isinstance(level, int) or level < 2 for level in levels):
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels = list(levels)
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        level_tensor = torch.tensor(levels, dtype=torch.float64)
        half_range = (level_tensor - 1) / 2 + _FSQ_BOUND_MARGIN
        offset = torch.where(level_tensor % 2 == 0, 0.5, 0.0)
        radix = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.long), dim=0)
        self.register_buffer("level_counts", level_tensor.long(), persistent=False)
        self.register_buffer("half_range", half_range.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_range).float(), persistent=False)
        self.register_buffer("half_width", (level_tensor // 2).float(), persistent=False)
        self.register_buffer("radix", radix, persistent=False)

    def bound(self, z_last: Tensor) -> Tensor:
        """Squash channels (last dim) into the open interval that rounds to each channel's levels."""
        return torch.tanh(z_last + self.shift) * self.half_range - self.offset

    def forward(self, z: Tensor) -> QuantizerOutput:
        self._check_latent(z)
        with torch.autocast(z.device.type, enabled=False):
            bounded = self.bound(z.float().movedim(1, -1))
            rounded = straight_through(bounded.detach().round(), bounded)
            latent = (rounded / self.half_width).movedim(-1, 1)
        digits = (rounded.detach() + self.half_width).long()
        codes = (digits * self.radix).sum(dim=-1)
        return QuantizerOutput(
            latent=latent.to(z.dtype),
            codes=codes,
            loss=torch.zeros((), device=z.device),
            usage=self._usage(codes),
        )

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        self._check_codes(codes)
        digits = (codes.long().unsqueeze(-1) // self.radix) % self.level_counts
        return ((digits.float() - self.half_width) / self.half_width).movedim(-1, 1)

    def assignment_space(self, z: Tensor) -> Tensor:
        self._check_latent(z)
        return (self.bound(z.float().movedim(1, -1)) / self.half_width).movedim(-1, 1)
