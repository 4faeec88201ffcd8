"""Analytic training FLOPs of a model, for MFU (the trainer divides them by the device peak, ``train/mfu.py``).

Conventions (PaLM appendix B / nanoGPT / torchtitan): 2 FLOPs per multiply-accumulate; a training step (forward +
backward) costs 3x the forward; the FLOPs the *algorithm* needs are counted, activation recompute is not (that
would be HFU). A model reports its own step FLOPs through ``train_flops(batch)`` (``models/protocol.py``).
"""

from __future__ import annotations

from torch import nn

from polymodal.models.layers.moe import MoEFeedForward


def transformer_train_flops_per_token(n_matmul_params: int, n_layers: int, dim: int, seq_len: int) -> float:
    """Training FLOPs per token of a dense transformer: ``6 * N_matmul + 12 * L * d * T``.

    ``6 * N_matmul`` is the weight matmuls (2 FLOPs per multiply-accumulate, times 3 for forward + backward).
    ``N_matmul`` excludes embedding-table lookups (they multiply nothing) but includes the output projection /
    LM head, tied or not, because that matmul runs for every token (see :func:`matmul_params`).
    ``12 * L * d * T`` is the attention score (QK^T) and value (AV) matmuls with ``d = n_heads * head_dim``;
    causal sparsity is *not* discounted (the PaLM / nanoGPT / torchtitan convention), so for packed
    block-diagonal sequences this overstates attention. Activation recompute is not counted: this is
    model FLOPs (MFU), not hardware FLOPs (HFU).
    """
    for name, value in (
        ("n_matmul_params", n_matmul_params),
        ("n_layers", n_layers),
        ("dim", dim),
        ("seq_len", seq_len),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return 6.0 * n_matmul_params + 12.0 * n_layers * dim * seq_len


def matmul_params(model: nn.Module, exclude_types: tuple[type[nn.Module], ...] = ()) -> int:
    """Number of parameters multiplied once per token: the weights of every ``nn.Linear`` (and subclass).

    Biases, norms and embedding tables (lookups) are not matmuls and are not counted. A weight shared by
    several Linears is counted once; an output head tied to the embedding table *is* counted, since the
    head matmul runs per token. Raw ``nn.Parameter`` matmuls (e.g. ``nn.MultiheadAttention.in_proj_weight``)
    and patchify convolutions are not seen. ``exclude_types`` drops whole sub-trees, e.g. a frozen tower
    whose forward-only FLOPs (2 per parameter, not 6) you account for separately. A mixture-of-experts layer
    counts its router and ``top_k`` of its experts: the weights one token is multiplied by (capacity drops and the
    padding of the expert buffers are not counted).
    """
    excluded = {
        id(inner)
        for module in model.modules()
        if exclude_types and isinstance(module, exclude_types)
        for inner in module.modules()
    }
    counted: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, MoEFeedForward) and id(module) not in excluded:
            total += module.top_k * module.experts.weights_per_expert
        if not isinstance(module, nn.Linear) or id(module) in excluded:
            continue
        if id(module.weight) not in counted:
            counted.add(id(module.weight))
            total += module.weight.numel()
    return total
