"""The probes on fixed features: the linear probe reaches scikit-learn's logistic regression, the attentive probe
finds the one informative token, sweeps report their best point, and probing leaves the run's RNG alone."""

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from polymodal.train.evaluators.probes import ProbeTraining, fit_attentive_probe, fit_linear_probe, majority_accuracy

CLASSES, DIM = 4, 8


def blobs(count: int, generator: torch.Generator, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    return centres[labels] + 0.6 * torch.randn(count, DIM, generator=generator) + 3.0, labels


def test_linear_probe_matches_scikit_learn_logistic_regression(single_thread):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, DIM, generator=generator)
    train, val = blobs(300, generator, centres), blobs(1000, generator, centres)
    mean, std = train[0].mean(0), train[0].std(0)
    reference = max(
        LogisticRegression(C=c, max_iter=5000)
        .fit(((train[0] - mean) / std).numpy(), train[1].numpy())
        .score(((val[0] - mean) / std).numpy(), val[1].numpy())
        for c in (0.1, 1.0, 10.0)
    )
    training = ProbeTraining(learning_rates=(1e-3, 1e-2, 1e-1), weight_decays=(0.0, 1e-2), epochs=30, batch_size=100)
    result = fit_linear_probe(train, val, training)
    assert result.accuracy == pytest.approx(reference, abs=0.01)
    assert result.lr in training.learning_rates and result.weight_decay in training.weight_decays
    assert fit_linear_probe(train, val, ProbeTraining(learning_rates=(1e-3,), weight_decays=(0.0,), epochs=1,
        batch_size=100)).accuracy < result.accuracy  # fmt: skip  # the sweep picks a better point than a poor one


def test_attentive_probe_finds_the_informative_token_and_reports_the_best_lr(single_thread):
    generator = torch.Generator().manual_seed(1)
    centres = 4 * torch.randn(CLASSES, DIM, generator=generator)

    def tokens(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, CLASSES, (count,), generator=generator)
        noise = torch.randn(count, 6, DIM, generator=generator)
        where = torch.randint(0, 6, (count,), generator=generator)
        noise[torch.arange(count), where] += centres[labels]  # one token of six carries the class
        return noise, labels

    training = ProbeTraining(learning_rates=(1e-4, 3e-2), weight_decays=(0.0,), epochs=30, batch_size=50)
    result = fit_attentive_probe(tokens(300), tokens(200), training, num_heads=2)
    assert result.accuracy > 0.85 and result.lr == 3e-2


def test_probing_draws_no_numbers_from_the_global_generator(single_thread):
    generator = torch.Generator().manual_seed(2)
    centres = torch.randn(CLASSES, DIM, generator=generator)
    state = torch.get_rng_state()
    fit_linear_probe(blobs(40, generator, centres), blobs(20, generator, centres), ProbeTraining(epochs=2))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_linear_probe_on_tokens_asks_for_pooling():
    tokens = torch.randn(4, 3, DIM), torch.arange(4)
    with pytest.raises(ValueError, match="set pool: mean or first"):
        fit_linear_probe(tokens, tokens, ProbeTraining(epochs=1))


def test_majority_accuracy_answers_the_training_splits_most_frequent_class():
    train = torch.tensor([2, 0, 2, 1, 2, 0])  # class 2 most frequent in training
    val = torch.tensor([0, 0, 0, 2, 1])  # though not in validation: the baseline cannot know that
    assert majority_accuracy(train, val) == pytest.approx(1 / 5)
    assert majority_accuracy(torch.tensor([1, 0]), torch.tensor([0, 1, 1])) == pytest.approx(1 / 3)  # ties: lowest
