"""The auxiliary losses of mixture-of-experts layers, read from the router statistics the trunks write."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from polymodal.models.meta import DataDict, Objective


class MoEAuxLoss(Objective):
    """``balance_weight * balance + z_loss_weight * z``, each averaged over the MoE layers of every ``stats_keys``.

    ``balance`` is the Switch/GShard load-balancing loss ``E * sum_i f_i * P_i`` (``f_i`` the fraction of token slots
    routed to expert ``i``, ``P_i`` its mean router probability; 1 when balanced), ``z`` the ST-MoE router z-loss
    ``mean(logsumexp(logits)^2)``. Reports both unweighted, with the fraction of dropped slots and the busiest
    expert's share of slots (both averaged over layers). Combine it with a recipe's other losses in
    :class:`~polymodal.models.meta.WeightedObjectives` (weight 1: the weights here are the ones that matter).
    """

    def __init__(
        self,
        balance_weight: float = 0.01,
        z_loss_weight: float = 0.001,
        stats_keys: str | Sequence[str] = "moe_stats",
    ):
        super().__init__(read_keys=stats_keys)
        if balance_weight < 0 or z_loss_weight < 0:
            raise ValueError(f"MoE loss weights must be >= 0, got {balance_weight} and {z_loss_weight}")
        self.balance_weight, self.z_loss_weight = balance_weight, z_loss_weight

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        missing = [key for key in self.read_keys if key not in data]
        if missing:
            raise KeyError(f"MoEAuxLoss reads {missing}, which no trunk wrote: does the model have MoE blocks?")
        stats = {
            name: torch.cat([data[key][name] for key in self.read_keys]).mean()
            for name in ("balance_loss", "router_z_loss", "dropped_fraction", "max_load_fraction")
        }
        loss = self.balance_weight * stats["balance_loss"] + self.z_loss_weight * stats["router_z_loss"]
        return loss, {name: value.detach() for name, value in stats.items()}
