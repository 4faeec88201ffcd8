"""Shared by the tests of attention masks: a mask rule's ``mask_mod`` evaluated densely, a plain softmax attention
to compare kernels against, and whether this torch build can run FlexAttention's backward on the CPU."""

import math

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from polymodal.models.layers.mask_rules import MaskRule


def evaluate_mask_mod(rule: MaskRule) -> torch.Tensor:
    """The rule's ``mask_mod`` on every (sample, query, key), as a ``[B, 1, T, T]`` bool tensor."""
    samples = torch.arange(rule.batch_size, device=rule.device)[:, None, None]
    positions = torch.arange(rule.seq_len, device=rule.device)
    allowed = rule.mask_mod()(samples, torch.tensor(0), positions[None, :, None], positions[None, None, :])
    return allowed.expand(rule.batch_size, rule.seq_len, rule.seq_len)[:, None]


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention written out: ``allowed`` broadcasts to ``[B, H, Tq, Tk]``, key/value heads repeat (GQA)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v


def flex_backward_on_cpu() -> bool:
    """Whether FlexAttention's backward runs on the CPU (torch 2.6–2.14 CPU builds have none)."""
    q = torch.zeros(1, 1, 4, 4, requires_grad=True)
    block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx, None, None, 4, 4, device="cpu")
    try:
        flex_attention(q, q, q, block_mask=block_mask).sum().backward()
    except NotImplementedError:
        return False
    return True
