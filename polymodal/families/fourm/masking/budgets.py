"""Per-sample input/target token budgets of a whole batch, drawn from a Dirichlet mixture with a seeded generator.

For each sample (4M's ``input_token_budget`` / ``target_token_budget``, batched):

1. draw a mixture component k, the input total ``Nin`` and the target total ``Ntg`` (inclusive ranges);
2. split ``Nin`` by a Dirichlet draw p: ``floor(p * Nin)``, then each leftover token goes to the argmax of a
   fresh Dirichlet draw (4M's remainder rule);
3. cap each modality (the caller's caps: image input <= N, image target <= N - input, sequences <= their cap,
   0 for modalities the sample lacks or the model cannot take);
4. by default, budget above a cap is **redistributed** to the modalities with room, proportionally to p
   (``redistribute=False`` drops it, as upstream does);
5. the same for ``Ntg`` with the target alphas and the target caps.

A modality absent from a sample gets probability 0 in that sample's draws, so its share goes to the others.
Every random number comes from the ``torch.Generator`` passed in; torch's ``Dirichlet``/``_standard_gamma`` use
the global RNG, so Gamma variates are drawn here by Marsaglia-Tsang from the generator's normals and uniforms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polymodal.families.fourm.masking.alphas import DirichletMixture


@dataclass(frozen=True)
class TokenBudgets:
    """Budgets of one batch. Modality columns follow the mixture's (registry) order."""

    component: torch.Tensor  # (B,) int64: the mixture component of each sample
    input: torch.Tensor  # (B, M) int64: input tokens per sample and modality
    target: torch.Tensor  # (B, M) int64: target tokens per sample and modality


def draw_uniform(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Uniforms in [0, 1) from ``generator`` (on its device)."""
    return torch.rand(shape, generator=generator, dtype=dtype, device=generator.device)


def sample_log_gamma(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """log of Gamma(concentration, 1) variates, elementwise, float64.

    Marsaglia-Tsang (2000) for shape >= 1, rejection-sampled for all elements at once (each round redraws only
    the rejected ones; acceptance is > 95 %). Shapes a < 1 use Gamma(a) = Gamma(a + 1) * U^(1/a), kept in log
    space so alphas like 1e-9 give -1e9-scale logs instead of underflowing to 0.
    """
    alpha = concentration.to(torch.float64).flatten()
    if (alpha <= 0).any() or not torch.isfinite(alpha).all():
        raise ValueError(f"Gamma concentrations must be finite and > 0, got min {alpha.min().item()}")
    boosted = alpha < 1
    d = torch.where(boosted, alpha + 1, alpha) - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    log_gamma = torch.empty_like(alpha)
    pending = torch.arange(alpha.numel(), device=alpha.device)
    while pending.numel():
        normal = torch.randn(pending.shape, generator=generator, dtype=torch.float64, device=generator.device)
        uniform = draw_uniform(tuple(pending.shape), generator)
        dp, v = d[pending], (1.0 + c[pending] * normal) ** 3
        log_v = torch.log(v.clamp(min=torch.finfo(torch.float64).tiny))
        accepted = (v > 0) & (torch.log(uniform) < 0.5 * normal**2 + dp - dp * v + dp * log_v)
        log_gamma[pending[accepted]] = torch.log(dp[accepted]) + log_v[accepted]
        pending = pending[~accepted]
    boost_uniform = 1.0 - draw_uniform(tuple(alpha.shape), generator)  # in (0, 1]
    log_gamma = log_gamma + torch.where(boosted, torch.log(boost_uniform) / alpha, 0.0)
    return log_gamma.view(concentration.shape)


def sample_dirichlet(
    concentration: torch.Tensor, generator: torch.Generator, support: torch.Tensor | None = None
) -> torch.Tensor:
    """Dirichlet draws over the last dim (float64). ``support`` (bool, broadcastable) limits each draw to the
    True entries (a Dirichlet over them; 0 elsewhere); a row with empty support is all 0."""
    log_gamma = sample_log_gamma(concentration, generator)
    if support is None:
        return torch.softmax(log_gamma, dim=-1)
    support = support.expand_as(log_gamma)
    proportions = torch.softmax(log_gamma.masked_fill(~support, -torch.inf), dim=-1)
    return torch.where(support.any(-1, keepdim=True), proportions, 0.0)


def draw_totals(bounds: tuple[int, int], batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) int64 uniform in the inclusive range ``bounds``."""
    low, high = bounds
    return torch.randint(low, high + 1, (batch_size,), generator=generator, device=generator.device)


def split_total(
    totals: torch.Tensor,
    concentration: torch.Tensor,
    support: torch.Tensor,
    caps: torch.Tensor,
    generator: torch.Generator,
    redistribute: bool,
) -> torch.Tensor:
    """Split each row's total over its modalities (steps 2-4 of the module docstring).

    Args:
        totals: (B,) tokens to split.
        concentration: (B, M) Dirichlet concentration of each row's component.
        support: (B, M) bool, the modalities each sample has (the others get probability 0).
        caps: (B, M) int64 most tokens each modality can take.
    Returns:
        (B, M) int64 budgets, ``<= caps``; with ``redistribute`` they sum to ``min(total, caps.sum(1))``.
    """
    batch_size, num_modalities = concentration.shape
    proportions = sample_dirichlet(concentration, generator, support)
    totals = torch.where(support.any(1), totals, 0)
    budgets = torch.floor(proportions * totals[:, None]).long()
    leftover = totals - budgets.sum(1)  # in 0..M-1
    fresh = sample_dirichlet(concentration[:, None].expand(-1, num_modalities - 1, -1), generator, support[:, None])
    winners = fresh.argmax(-1)  # (B, M-1): the modality of each fresh draw's largest share
    takes = torch.arange(num_modalities - 1, device=totals.device) < leftover[:, None]
    budgets.scatter_add_(1, winners, takes.long())
    capped = torch.minimum(budgets, caps)
    if redistribute:
        give_to_room(capped, (budgets - capped).sum(1), caps - capped, proportions)
    return capped


def give_to_room(budgets: torch.Tensor, excess: torch.Tensor, room: torch.Tensor, weights: torch.Tensor) -> None:
    """Add each row's ``excess`` tokens to ``budgets`` (in place) without exceeding ``room``.

    Each round gives every modality with room ``floor(excess * w / sum(w))`` of the remaining excess (clipped to
    its room), w being ``weights`` over the modalities with room (uniform if those weights are all 0); a row whose
    round would give nothing gives one token to its open modality of largest weight. Every round either empties
    a row's excess or fills a modality or gives >= 1 token, so the loop ends; it stops once every row is out of
    excess or room.
    """
    excess, room = excess.clone(), room.clone()
    while True:
        open_ = room > 0
        active = (excess > 0) & open_.any(1)
        if not active.any():
            return
        open_weights = torch.where(open_, weights, 0.0)
        open_weights = torch.where(open_weights.sum(1, keepdim=True) > 0, open_weights, open_.double())
        shares = torch.floor(excess[:, None] * open_weights / open_weights.sum(1, keepdim=True).clamp(min=1e-300))
        shares = torch.minimum(shares.long(), room) * active[:, None]
        stuck = active & (shares.sum(1) == 0)
        largest = torch.where(open_, open_weights, -1.0).argmax(1)
        shares[stuck, largest[stuck]] = 1
        budgets += shares
        room -= shares
        excess -= shares.sum(1)


def sample_token_budgets(
    mixture: DirichletMixture,
    present: torch.Tensor,
    input_caps: torch.Tensor,
    target_caps: torch.Tensor,
    target_excludes_input: torch.Tensor,
    input_tokens: tuple[int, int],
    target_tokens: tuple[int, int] | None,
    generator: torch.Generator,
    redistribute: bool = True,
) -> TokenBudgets:
    """Budgets for a batch.

    Args:
        present: (B, M) bool, the modalities each sample has.
        input_caps / target_caps: (B, M) int64 most input / target tokens per modality (0 where absent or where
            the model cannot take the modality as input / target).
        target_excludes_input: (M,) bool, modalities whose target cap shrinks by the input budget (images: a
            position is input or target, never both).
        input_tokens / target_tokens: inclusive (min, max) of the per-sample totals. ``target_tokens=None``:
            every modality's target budget is its whole (remaining) cap, as 4M without a target budget.
    """
    device = generator.device
    batch_size = present.shape[0]
    if mixture.sampling_weights is None:
        component = torch.randint(0, mixture.num_components, (batch_size,), generator=generator, device=device)
    else:
        weights = torch.tensor(mixture.sampling_weights, dtype=torch.float64, device=device)
        component = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    input_totals = draw_totals(input_tokens, batch_size, generator)
    target_totals = None if target_tokens is None else draw_totals(target_tokens, batch_size, generator)
    input_budget = split_total(
        input_totals, mixture.input_concentration().to(device)[component], present, input_caps, generator, redistribute
    )
    target_room = torch.where(target_excludes_input, target_caps - input_budget, target_caps).clamp(min=0)
    if target_totals is None:
        target_budget = target_room
    else:
        concentration = mixture.target_concentration().to(device)[component]
        target_budget = split_total(target_totals, concentration, present, target_room, generator, redistribute)
    return TokenBudgets(component=component, input=input_budget, target=target_budget)
