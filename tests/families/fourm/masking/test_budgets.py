import pytest
import torch

from polymodal.families.fourm.masking.alphas import DirichletMixture
from polymodal.families.fourm.masking.budgets import (
    give_to_room,
    sample_dirichlet,
    sample_log_gamma,
    sample_token_budgets,
    split_total,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.5])
def test_gamma_moments(alpha):
    samples = sample_log_gamma(torch.full((100_000,), alpha), generator()).exp()
    assert samples.mean().item() == pytest.approx(alpha, rel=0.02)
    assert samples.var().item() == pytest.approx(alpha, rel=0.06)


def test_dirichlet_matches_analytic_mean_and_variance():
    alpha = torch.tensor([0.5, 1.0, 2.0, 5.0], dtype=torch.float64)
    samples = sample_dirichlet(alpha.expand(50_000, -1), generator(1))
    total = alpha.sum()
    mean = alpha / total
    variance = alpha * (total - alpha) / (total**2 * (total + 1))
    torch.testing.assert_close(samples.sum(1), torch.ones(50_000, dtype=torch.float64))
    torch.testing.assert_close(samples.mean(0), mean, rtol=0.02, atol=0)
    torch.testing.assert_close(samples.var(0), variance, rtol=0.05, atol=0)


def test_tiny_alphas_give_one_hot_draws_without_nan():
    samples = sample_dirichlet(torch.full((1000, 5), 1e-9), generator())
    assert torch.isfinite(samples).all()
    torch.testing.assert_close(samples.sum(1), torch.ones(1000, dtype=torch.float64))
    assert (samples.max(1).values == 1).all()
    assert len(set(samples.argmax(1).tolist())) == 5  # every modality wins sometimes


def test_support_limits_the_draw_and_empty_support_gives_zeros():
    support = torch.tensor([[True, False, True], [False, False, False]])
    samples = sample_dirichlet(torch.ones(2, 3), generator(), support)
    assert samples[0, 1] == 0 and samples[0].sum().item() == pytest.approx(1.0)
    assert (samples[1] == 0).all()


def test_draws_come_from_the_generator_only():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = sample_dirichlet(torch.full((50, 4), 0.7), generator(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, sample_dirichlet(torch.full((50, 4), 0.7), generator(5)))
    assert not torch.equal(first, sample_dirichlet(torch.full((50, 4), 0.7), generator(6)))


def random_split_inputs(batch: int, modalities: int, seed: int):
    g = generator(seed)
    totals = torch.randint(0, 200, (batch,), generator=g)
    concentration = torch.rand(batch, modalities, generator=g, dtype=torch.float64) * 3 + 1e-9
    support = torch.rand(batch, modalities, generator=g) < 0.8
    caps = torch.randint(0, 60, (batch, modalities), generator=g) * support
    return totals, concentration, support, caps


@pytest.mark.parametrize("seed", range(3))
def test_redistributed_split_fills_the_budget_within_caps(seed):
    totals, concentration, support, caps = random_split_inputs(500, 6, seed)
    budgets = split_total(totals, concentration, support, caps, generator(seed), redistribute=True)
    assert (budgets >= 0).all() and (budgets <= caps).all()
    assert (budgets[~support] == 0).all()
    expected = torch.minimum(torch.where(support.any(1), totals, 0), caps.sum(1))
    assert torch.equal(budgets.sum(1), expected)


@pytest.mark.parametrize("seed", range(3))
def test_upstream_mode_drops_what_the_caps_cut(seed):
    totals, concentration, support, caps = random_split_inputs(500, 6, seed)
    uncapped = split_total(totals, concentration, support, torch.full_like(caps, 10**6), generator(seed), False)
    assert torch.equal(uncapped.sum(1), torch.where(support.any(1), totals, 0))  # floor + argmax remainder
    dropped = split_total(totals, concentration, support, caps, generator(seed), redistribute=False)
    assert torch.equal(dropped, torch.minimum(uncapped, caps))
    redistributed = split_total(totals, concentration, support, caps, generator(seed), redistribute=True)
    assert (redistributed >= dropped).all()
    no_cap_hit = (uncapped <= caps).all(1)
    assert no_cap_hit.any() and torch.equal(redistributed[no_cap_hit], dropped[no_cap_hit])


def test_redistribution_is_proportional_to_the_draw():
    budgets = torch.tensor([[4, 0, 0, 0]])
    give_to_room(budgets, torch.tensor([30]), torch.tensor([[0, 100, 100, 100]]), torch.tensor([[0.7, 0.2, 0.1, 0.0]]))
    assert budgets.tolist() == [[4, 20, 10, 0]]
    budgets = torch.tensor([[4, 0, 0]])  # every open modality has weight 0: spread evenly
    give_to_room(budgets, torch.tensor([6]), torch.tensor([[0, 5, 5]]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert budgets.tolist() == [[4, 3, 3]]
    budgets = torch.tensor([[0, 0]])  # not enough room: fill it and stop
    give_to_room(budgets, torch.tensor([9]), torch.tensor([[2, 3]]), torch.tensor([[0.5, 0.5]]))
    assert budgets.tolist() == [[2, 3]]


def test_token_budgets_respect_image_positions_and_absent_modalities(registry):
    mixture = DirichletMixture.single(registry, 0.5, 0.5)
    names = list(registry)
    batch = 400
    present = torch.rand(batch, len(names), generator=generator(3)) < 0.7
    sizes = torch.tensor([registry[name].num_positions() for name in names])
    is_image = torch.tensor([registry[name].is_image for name in names])
    budgets = sample_token_budgets(
        mixture, present, sizes * present, sizes * present, is_image, (10, 40), (5, 30), generator(4)
    )
    assert budgets.input.shape == budgets.target.shape == (batch, len(names))
    assert (budgets.input[~present] == 0).all() and (budgets.target[~present] == 0).all()
    image_total = budgets.input + budgets.target
    assert (image_total[:, is_image] <= sizes[is_image]).all()
    room = (sizes * present).sum(1)
    assert ((budgets.input.sum(1) >= torch.minimum(room, torch.tensor(10))) & (budgets.input.sum(1) <= 40)).all()
    everything = sample_token_budgets(
        mixture, present, sizes * present, sizes * present, is_image, (20, 20), None, generator()
    )
    assert torch.equal(everything.target, torch.where(is_image, sizes - everything.input, sizes) * present)


def test_components_follow_sampling_weights(registry):
    entry = {"input_alphas": [1.0, 1.0], "target_alphas": [1.0, 1.0]}
    mixture = DirichletMixture.from_config(
        {"sampling_weights": [1.0, 3.0], "alphas_mixture": {name: entry for name in registry}}, registry
    )
    present = torch.ones(4000, len(registry), dtype=torch.bool)
    caps = torch.full((4000, len(registry)), 50)
    budgets = sample_token_budgets(
        mixture, present, caps, caps, torch.zeros(len(registry), dtype=torch.bool), (8, 8), (8, 8), generator()
    )
    assert budgets.component.float().mean().item() == pytest.approx(0.75, abs=0.03)
