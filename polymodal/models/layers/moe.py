"""A mixture-of-experts feed-forward: a top-k token-choice router over stacked experts computed with batched matmuls.

Each token picks its ``top_k`` experts from a softmax over ``num_experts`` router logits (computed in fp32). Token
slots are scattered into a padded ``[E, C, D]`` buffer (``C`` slots per expert, filled in token order), the experts
run as three or two ``torch.bmm`` calls over that buffer, and the outputs are gathered back, weighted by the router
probabilities. ``capacity_factor=None`` is dropless (``C`` = the busiest expert's load); a float sets
``C = ceil(capacity_factor * tokens * top_k / E)`` and the slots beyond it are dropped (the residual carries them).

The layer returns its output and its router statistics (:data:`MOE_STATS`); the transformer stacks them per layer
and the trunk writes them to the data_dict, where an objective turns them into auxiliary losses. Nothing is kept in
module or global state.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.models.layers.mlp import QuickGELU

ExpertKind = Literal["swiglu", "geglu", "gelu", "quick_gelu"]
EXPERT_KINDS: tuple[str, ...] = ("swiglu", "geglu", "gelu", "quick_gelu")
MOE_STATS = ("balance_loss", "router_z_loss", "dropped_fraction", "max_load_fraction")

_ACTIVATIONS = {"swiglu": F.silu, "geglu": F.gelu, "gelu": F.gelu, "quick_gelu": QuickGELU()}


class GroupedExperts(nn.Module):
    """``num_experts`` feed-forwards with stacked weights, applied to a padded ``[E, C, D]`` buffer at once.

    ``"swiglu"`` / ``"geglu"`` are gated (``w2(act(w1 x) * w3 x)``, no biases), ``"gelu"`` / ``"quick_gelu"`` plain
    two-layer MLPs (``w2(act(w1 x + b1)) + b2`` with ``bias``), like the dense kinds of
    :func:`~polymodal.models.layers.block.build_transformer`."""

    def __init__(self, num_experts: int, dim: int, hidden_dim: int, kind: ExpertKind = "swiglu", bias: bool = False):
        super().__init__()
        if kind not in EXPERT_KINDS:
            raise ValueError(f"expert kind must be one of {EXPERT_KINDS}, got {kind!r}")
        self.num_experts, self.dim, self.hidden_dim, self.kind = num_experts, dim, hidden_dim, kind
        self.gated = kind in ("swiglu", "geglu")
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim)) if self.gated else None
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        use_bias = bias and not self.gated
        self.b1 = nn.Parameter(torch.zeros(num_experts, 1, hidden_dim)) if use_bias else None
        self.b2 = nn.Parameter(torch.zeros(num_experts, 1, dim)) if use_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert like an ``nn.Linear`` of its shape (uniform in ``±1/sqrt(fan_in)``), biases zero."""
        for weight in (self.w1, self.w3, self.w2):
            if weight is not None:
                bound = 1.0 / math.sqrt(weight.shape[1])
                nn.init.uniform_(weight, -bound, bound)
        for bias in (self.b1, self.b2):
            if bias is not None:
                nn.init.zeros_(bias)

    @property
    def weights_per_expert(self) -> int:
        """The matmul weights one token meets in one expert (biases excluded)."""
        return sum(math.prod(weight.shape[1:]) for weight in (self.w1, self.w3, self.w2) if weight is not None)

    def expert_forward(self, tokens: Tensor, expert: int) -> Tensor:
        """Expert ``expert`` alone on ``[n, D]`` tokens: the per-expert computation the batched one must equal."""
        act = _ACTIVATIONS[self.kind]
        hidden = tokens @ self.w1[expert]
        if self.gated:
            hidden = act(hidden) * (tokens @ self.w3[expert])
        else:
            hidden = act(hidden + self.b1[expert] if self.b1 is not None else hidden)
        out = hidden @ self.w2[expert]
        return out + self.b2[expert] if self.b2 is not None else out

    def forward(self, buffer: Tensor) -> Tensor:
        """``[E, C, D] -> [E, C, D]``: expert ``e`` applied to the ``C`` slots of row ``e``."""
        act = _ACTIVATIONS[self.kind]
        hidden = torch.bmm(buffer, self.w1.to(buffer.dtype))
        if self.gated:
            hidden = act(hidden) * torch.bmm(buffer, self.w3.to(buffer.dtype))
        else:
            hidden = act(hidden + self.b1 if self.b1 is not None else hidden)
        out = torch.bmm(hidden, self.w2.to(buffer.dtype))
        return out + self.b2 if self.b2 is not None else out

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}, kind={self.kind!r}"


class Routing:
    """Where each token slot goes: slot ``s = token * top_k + j`` goes to ``expert[s]`` at position ``position[s]``
    of that expert's buffer, with combine weight ``weight[s]``; ``kept[s]`` is false for a slot beyond capacity."""

    def __init__(self, expert: Tensor, weight: Tensor, position: Tensor, capacity: int, loads: Tensor):
        self.expert, self.weight, self.position, self.capacity, self.loads = expert, weight, position, capacity, loads
        self.kept = position < capacity


class MoEFeedForward(nn.Module):
    """Router + :class:`GroupedExperts`: ``[..., D] -> ([..., D], {stat: scalar})`` (see the module docstring).

    ``normalize_top_k`` rescales each token's ``top_k`` router probabilities to sum to one (for ``top_k=1`` every
    weight becomes 1, so the router then learns only through the balancing loss). Replacing ``self.experts`` by a
    module with the same ``[E, C, D] -> [E, C, D]`` contract (expert parallelism does) changes nothing else."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: float | None = None,
        kind: ExpertKind = "swiglu",
        bias: bool = False,
        normalize_top_k: bool = False,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"moe num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"moe top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"moe capacity_factor must be > 0 or None (dropless), got {capacity_factor}")
        self.num_experts, self.top_k, self.capacity_factor = num_experts, top_k, capacity_factor
        self.normalize_top_k = normalize_top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = GroupedExperts(num_experts, dim, hidden_dim, kind, bias)

    def capacity(self, num_tokens: int, loads: Tensor) -> int:
        """Slots per expert: the busiest expert's load when dropless, else ``ceil(cf * tokens * k / E)``."""
        if self.capacity_factor is None:
            return int(loads.max())
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def route(self, logits: Tensor) -> Routing:
        """Top-k routing of ``[N, E]`` fp32 logits; positions are assigned in token order."""
        probs = logits.softmax(dim=-1)
        weight, expert = probs.topk(self.top_k, dim=-1)
        if self.normalize_top_k:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        expert, weight = expert.reshape(-1), weight.reshape(-1)
        one_hot = F.one_hot(expert, self.num_experts)
        position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1
        loads = one_hot.sum(dim=0)
        return Routing(expert, weight, position, self.capacity(logits.shape[0], loads), loads)

    def stats(self, logits: Tensor, routing: Routing) -> dict[str, Tensor]:
        """Switch balancing loss ``E * sum_i f_i P_i``, ST-MoE z-loss, the dropped and the busiest expert's fraction."""
        slots = routing.expert.numel()
        load_fraction = routing.loads.float() / slots
        mean_prob = logits.softmax(dim=-1).mean(dim=0)
        return {
            "balance_loss": self.num_experts * (load_fraction * mean_prob).sum(),
            "router_z_loss": logits.logsumexp(dim=-1).square().mean(),
            "dropped_fraction": (~routing.kept).sum().float() / slots,
            "max_load_fraction": load_fraction.max(),
        }

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        with torch.autocast(x.device.type, enabled=False):  # router logits in fp32 under bf16 autocast too
            logits = F.linear(tokens.float(), self.router.weight.float())
        routing = self.route(logits)
        # Dropped slots are written to a spare last row of the buffer and combined with weight 0: no data-dependent
        # shapes, so a compiled block with a capacity factor is one graph.
        spare = self.num_experts * routing.capacity
        slot_index = torch.where(routing.kept, routing.expert * routing.capacity + routing.position, spare)
        source = torch.arange(routing.expert.numel(), device=x.device) // self.top_k
        buffer = tokens.new_zeros(spare + 1, shape[-1]).index_copy(0, slot_index, tokens[source])
        expert_out = self.experts(buffer[:spare].view(self.num_experts, routing.capacity, -1)).flatten(0, 1)
        gathered = expert_out[torch.where(routing.kept, slot_index, 0)]
        weight = (routing.weight * routing.kept).to(gathered.dtype)
        out = tokens.new_zeros(tokens.shape).index_add(0, source, (gathered * weight[:, None]).to(tokens.dtype))
        return out.view(shape), self.stats(logits, routing)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, capacity_factor={self.capacity_factor}, normalize_top_k={self.normalize_top_k}"
