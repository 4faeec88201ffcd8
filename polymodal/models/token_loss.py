"""The next-token loss computed from the head's input, a chunk of labelled positions at a time.

Projecting every position to the vocabulary and taking the loss from the logits holds ``B·T·V`` fp32 logits,
and as much again for the log-softmax and for their gradient. Here the positions whose target is ``ignore_index``
are dropped first, then the rest are projected ``chunk_size`` rows at a time, in float32 (float64 for float64
inputs) whatever the autocast dtype. One log-sum-exp per row serves both the cross-entropy
(``log Z - logit[target]``) and the z-loss (``(log Z)²``), and the arg-max of the same logits counts the correct
predictions. Backward recomputes each chunk's logits from the saved hidden states and log-sum-exps instead of
keeping them, so the memory beyond the inputs is ``O(chunk_size · V)``, not ``O(B·T·V)``, for one extra matmul.

When the caller knows how the objective will weigh the two sums (``z_loss_weight``: the z-loss's weight relative to
the cross-entropy's, as in ``NextTokenLoss``), the forward pass also computes the gradients for that weighting while
each chunk's logits exist (as Liger-Kernel's fused linear cross-entropy does), and backward only scales them: one
matmul fewer per chunk, for a weight-sized gradient buffer held from forward to backward. A backward whose incoming
gradients do not have that ratio (another objective read the sums) recomputes the chunks as without it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TokenLossSums(NamedTuple):
    """Sums over a batch's labelled positions; an objective turns them into means (``polymodal.objectives.lm``).

    A NamedTuple, so that the wrappers that walk a model's outputs for tensors (FSDP2's backward hooks, DDP) see
    them."""

    cross_entropy: Tensor  # sum of -log p(target)
    log_z_squared: Tensor  # sum of (log Z)², what the z-loss penalises
    correct: Tensor  # positions whose arg-max is the target
    count: Tensor  # labelled positions


def chunked_token_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    chunk_size: int,
    ignore_index: int = -100,
    z_loss_weight: float | None = None,
) -> TokenLossSums:
    """The loss sums of the logits ``hidden @ weight.T + bias`` against ``targets`` (``hidden`` [..., D],
    ``targets`` of the same leading shape), without making those logits for more than ``chunk_size`` positions at
    once. Differentiable in ``hidden``, ``weight`` and ``bias``; with ``z_loss_weight`` the gradients for a loss
    ``c · (cross_entropy + z_loss_weight · log_z_squared)`` are computed in the forward pass (module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = targets.flatten()
    labelled = targets != ignore_index
    rows = labelled.nonzero().squeeze(1)  # indices: shapes follow the targets alone (FLOP counting on fake weights)
    cross_entropy, log_z_squared, correct = _ChunkedHeadLoss.apply(
        hidden.flatten(0, -2)[rows], weight, bias, targets[rows], chunk_size, z_loss_weight
    )
    return TokenLossSums(cross_entropy, log_z_squared, correct, labelled.sum())


class _HeadGrads:
    """Gradients of the rows, the weight and the bias, accumulated chunk by chunk from each chunk's logits'
    gradient in the compute ``dtype`` (``None`` for an input that needs none), handed out in the inputs' dtypes."""

    def __init__(
        self, hidden: Tensor, weight: Tensor, bias: Tensor | None, needs: tuple[bool, ...], dtype: torch.dtype
    ):
        self.hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if needs[0] else None
        self.weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if needs[1] else None
        self.bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if needs[2] and bias is not None else None
        self.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)

    def add(self, rows: slice, chunk: Tensor, weight: Tensor, grad_logits: Tensor) -> None:
        if self.hidden is not None:
            self.hidden[rows] = grad_logits @ weight
        if self.weight is not None:
            self.weight.addmm_(grad_logits.T, chunk)
        if self.bias is not None:
            self.bias += grad_logits.sum(0)

    def scaled(self, scale: Tensor | None = None) -> tuple[Tensor | None, ...]:
        """Each gradient (times ``scale`` if given) in its input's dtype, as autograd wants them."""
        found = []
        for grad, dtype in zip((self.hidden, self.weight, self.bias), self.dtypes, strict=True):
            if grad is not None and scale is not None:
                grad.mul_(scale)
            found.append(None if grad is None else grad.to(dtype))
        return tuple(found)


def _logits_grad_(probs: Tensor, row_scale: Tensor, targets: Tensor, target_grad: Tensor) -> Tensor:
    """In place in the softmax ``probs``, the gradient of ``g_ce·(log Z - logit[t]) + g_z·(log Z)²`` in the
    logits: ``softmax·(g_ce + 2·g_z·log Z) - g_ce·onehot(t)``, given ``row_scale = g_ce + 2·g_z·log Z`` and
    ``target_grad = -g_ce``."""
    grad_logits = probs.mul_(row_scale[:, None])
    return grad_logits.scatter_add_(1, targets[:, None], target_grad.expand(len(targets), 1).to(grad_logits.dtype))


class _ChunkedHeadLoss(torch.autograd.Function):
    """``(Σ cross-entropy, Σ (log Z)², correct)`` of labelled rows; saves the rows, the targets and log Z, or, with
    a ``z_loss_weight``, the gradients for that weighting (per unit of cross-entropy gradient) besides them."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_size: int,
        z_loss_weight: float | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = _compute_dtype(hidden, weight)
        log_z = hidden.new_empty(len(targets), dtype=dtype)
        target_logit = torch.empty_like(log_z)
        correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        needs = tuple(ctx.needs_input_grad[:3])
        early = _HeadGrads(hidden, weight, bias, needs, dtype) if z_loss_weight is not None and any(needs) else None
        minus_one = torch.full((), -1.0, dtype=dtype, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            weight_, bias_ = weight.to(dtype), None if bias is None else bias.to(dtype)
            for rows in _chunks(len(targets), chunk_size):
                chunk = hidden[rows].to(dtype)
                logits = _logits(chunk, weight_, bias_)
                chunk_targets = targets[rows]
                target_logit[rows] = logits.gather(1, chunk_targets[:, None]).squeeze(1)
                correct += (logits.argmax(-1) == chunk_targets).sum()
                if early is None:
                    log_z[rows] = _log_sum_exp_(logits)
                else:
                    probs, log_z[rows] = _softmax_(logits)
                    row_scale = 1 + 2 * z_loss_weight * log_z[rows]
                    early.add(rows, chunk, weight_, _logits_grad_(probs, row_scale, chunk_targets, minus_one))
                    del probs  # the logits' storage
                del logits  # before the next chunk's logits are made, not after
        ctx.chunk_size, ctx.z_loss_weight, ctx.early = chunk_size, z_loss_weight, early
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.mark_non_differentiable(correct)
        return (log_z - target_logit).sum(), log_z.square().sum(), correct

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_cross_entropy: Tensor, grad_log_z_squared: Tensor, _: Tensor
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        early, ctx.early = ctx.early, None
        if early is not None and torch.isclose(grad_log_z_squared, ctx.z_loss_weight * grad_cross_entropy, rtol=1e-5):
            return (*early.scaled(grad_cross_entropy.to(log_z.dtype)), None, None, None)
        dtype = log_z.dtype
        row_scale = grad_cross_entropy + 2 * grad_log_z_squared * log_z
        target_grad = -grad_cross_entropy.to(dtype)
        grads = _HeadGrads(hidden, weight, bias, tuple(ctx.needs_input_grad[:3]), dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            weight_, bias_ = weight.to(dtype), None if bias is None else bias.to(dtype)
            for rows in _chunks(len(targets), ctx.chunk_size):
                chunk = hidden[rows].to(dtype)
                logits = _logits(chunk, weight_, bias_)
                grads.add(
                    rows,
                    chunk,
                    weight_,
                    _logits_grad_(logits.sub_(log_z[rows, None]).exp_(), row_scale[rows], targets[rows], target_grad),
                )
                del logits  # before the next chunk's logits are made, not after
        return (*grads.scaled(), None, None, None)


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64."""
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def _chunks(rows: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, rows, size)]


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    hidden = hidden.to(weight.dtype)
    return hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)


def _log_sum_exp_(logits: Tensor) -> Tensor:
    """``logsumexp`` over the last dim, using ``logits`` as its workspace (no second chunk-sized buffer)."""
    top = logits.amax(-1, keepdim=True)
    return logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))


def _softmax_(logits: Tensor) -> tuple[Tensor, Tensor]:
    """The softmax over the last dim, in the storage of ``logits``, and each row's ``logsumexp``."""
    top = logits.amax(-1, keepdim=True)
    total = logits.sub_(top).exp_().sum(-1, keepdim=True)
    return logits.div_(total), total.log_().add_(top).squeeze(-1)
