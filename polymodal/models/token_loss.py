"""The next-token loss computed from the head's input, a chunk of labelled positions at a time.

Projecting every position to the vocabulary and taking the loss from the logits holds ``B·T·V`` fp32 logits,
and as much again for the log-softmax and for their gradient. Here the positions whose target is ``ignore_index``
are dropped first, then the rest are projected ``chunk_size`` rows at a time, in float32 (float64 for float64
inputs) whatever the autocast dtype. One log-sum-exp per row serves both the cross-entropy
(``log Z - logit[target]``) and the z-loss (``(log Z)²``), and the arg-max of the same logits counts the correct
predictions. Backward recomputes each chunk's logits from the saved hidden states and log-sum-exps instead of
keeping them, so the memory beyond the inputs is ``O(chunk_size · V)``, not ``O(B·T·V)``, for one extra matmul.
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
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk_size: int, ignore_index: int = -100
) -> TokenLossSums:
    """The loss sums of the logits ``hidden @ weight.T + bias`` against ``targets`` (``hidden`` [..., D],
    ``targets`` of the same leading shape), without making those logits for more than ``chunk_size`` positions at
    once. Differentiable in ``hidden``, ``weight`` and ``bias``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = targets.flatten()
    labelled = targets != ignore_index
    rows = labelled.nonzero().squeeze(1)  # indices: shapes follow the targets alone (FLOP counting on fake weights)
    cross_entropy, log_z_squared, correct = _ChunkedHeadLoss.apply(
        hidden.flatten(0, -2)[rows], weight, bias, targets[rows], chunk_size
    )
    return TokenLossSums(cross_entropy, log_z_squared, correct, labelled.sum())


class _ChunkedHeadLoss(torch.autograd.Function):
    """``(Σ cross-entropy, Σ (log Z)², correct)`` of labelled rows; saves the rows, the targets and log Z."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = _compute_dtype(hidden, weight)
        log_z = hidden.new_empty(len(targets), dtype=dtype)
        target_logit = torch.empty_like(log_z)
        correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            weight_, bias_ = weight.to(dtype), None if bias is None else bias.to(dtype)
            for rows in _chunks(len(targets), chunk_size):
                logits = _logits(hidden[rows], weight_, bias_)
                chunk_targets = targets[rows]
                target_logit[rows] = logits.gather(1, chunk_targets[:, None]).squeeze(1)
                correct += (logits.argmax(-1) == chunk_targets).sum()
                log_z[rows] = _log_sum_exp_(logits)
                del logits  # before the next chunk's logits are made, not after
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(correct)
        return (log_z - target_logit).sum(), log_z.square().sum(), correct

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_cross_entropy: Tensor, grad_log_z_squared: Tensor, _: Tensor
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        dtype = log_z.dtype
        # d/d logits of g_ce·(log Z - logit[t]) + g_z·(log Z)²  =  softmax·(g_ce + 2·g_z·log Z) - g_ce·onehot(t)
        row_scale = (grad_cross_entropy + 2 * grad_log_z_squared * log_z)[:, None]
        target_grad = -grad_cross_entropy.to(dtype).expand(1, 1)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if needs_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if needs_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            weight_, bias_ = weight.to(dtype), None if bias is None else bias.to(dtype)
            for rows in _chunks(len(targets), ctx.chunk_size):
                chunk = hidden[rows].to(dtype)
                grad_logits = _logits(chunk, weight_, bias_).sub_(log_z[rows, None]).exp_().mul_(row_scale[rows])
                grad_logits.scatter_add_(1, targets[rows, None], target_grad.expand(len(chunk), 1))
                if grad_hidden is not None:
                    grad_hidden[rows] = grad_logits @ weight_
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.T, chunk)
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                del grad_logits  # before the next chunk's logits are made, not after
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )


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
