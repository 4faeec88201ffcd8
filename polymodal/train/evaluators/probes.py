"""Probes of frozen features: a linear probe (multinomial logistic regression on pooled features) and an attentive
probe (attentive pooling + linear on patch tokens), each swept over learning rates and weight decays in one run.

Every sweep point trains a fresh head with AdamW (cosine decay to 0) on the cached training features of the round,
from the same seed, and is scored by top-1 accuracy on the validation features; the best point is reported with its
hyper-parameters: ``accuracy``, ``lr``, ``weight_decay``. The training draws from its own seeded generators, so an
evaluation leaves the run's random streams as they were, and every rank (holding the same gathered features)
computes the same numbers.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.config.arguments import settings_from
from polymodal.data.multimodal.loader import BatchTransform
from polymodal.models.meta import ReadWriteBlock
from polymodal.models.pooling import AttentivePoolingHead
from polymodal.train.evaluators.context import SAMPLES, EvalContext
from polymodal.train.evaluators.data import IMAGE, ImageSplit
from polymodal.train.evaluators.features import Pool, image_features


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    lr: float
    weight_decay: float

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "lr": self.lr, "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class ProbeTraining:
    """The sweep: every ``learning_rates`` x ``weight_decays`` pair, ``epochs`` passes in batches of ``batch_size``."""

    learning_rates: Sequence[float] = (1e-3, 1e-2, 1e-1)
    weight_decays: Sequence[float] = (0.0, 1e-4)
    epochs: int = 50
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.learning_rates or not self.weight_decays:
            raise ValueError("the probe sweep needs at least one learning rate and one weight decay")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")

    def sweep(
        self,
        make_head: Callable[[], nn.Module],
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
    ) -> ProbeResult:
        """The best validation accuracy over the sweep (the first best point on ties)."""
        best: ProbeResult | None = None
        for lr, weight_decay in itertools.product(self.learning_rates, self.weight_decays):
            accuracy = self._train_and_score(make_head, train, val, float(lr), float(weight_decay))
            if best is None or accuracy > best.accuracy:
                best = ProbeResult(accuracy, float(lr), float(weight_decay))
        assert best is not None
        return best

    def _train_and_score(
        self,
        make_head: Callable[[], nn.Module],
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        lr: float,
        weight_decay: float,
    ) -> float:
        features, labels = train
        device = features.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            torch.manual_seed(self.seed)
            head = make_head().to(device)
            optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
            steps_per_epoch = math.ceil(len(features) / self.batch_size)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs * steps_per_epoch)
            order = torch.Generator().manual_seed(self.seed)
            head.train()
            for _ in range(self.epochs):
                permutation = torch.randperm(len(features), generator=order).to(device)
                for batch in permutation.split(self.batch_size):
                    loss = F.cross_entropy(head(features[batch]), labels[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
            head.eval()
            with torch.no_grad():
                predictions = torch.cat([head(chunk).argmax(-1) for chunk in val[0].split(self.batch_size)])
        return float((predictions == val[1]).float().mean())


def majority_accuracy(train_labels: torch.Tensor, val_labels: torch.Tensor) -> float:
    """The validation accuracy of always answering the training labels' most frequent class (the lowest on ties)."""
    return float((val_labels == torch.bincount(train_labels).argmax()).float().mean())


def num_classes(*labels: torch.Tensor) -> int:
    return int(max(int(label.max()) for label in labels)) + 1


class _OnTensor(nn.Module):
    """A head block called on a tensor: its one read key in, its one write key out."""

    def __init__(self, block: ReadWriteBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.block({self.block.read_keys[0]: tokens})[self.block.write_keys[0]]


def fit_linear_probe(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], training: ProbeTraining
) -> ProbeResult:
    """Logistic regression on ``[N, D]`` features, standardised with the training features' mean and std."""
    (train_x, train_y), (val_x, val_y) = train, val
    if train_x.dim() != 2:
        raise ValueError(f"a linear probe needs [N, D] features, got {tuple(train_x.shape)}: set pool: mean or first")
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    classes = num_classes(train_y, val_y)
    dim = train_x.shape[1]
    return training.sweep(
        lambda: nn.Linear(dim, classes), ((train_x - mean) / std, train_y), ((val_x - mean) / std, val_y)
    )


def fit_attentive_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    training: ProbeTraining,
    num_heads: int = 1,
    num_queries: int = 1,
) -> ProbeResult:
    """An :class:`~polymodal.models.pooling.AttentivePoolingHead` on ``[N, T, D]`` patch features."""
    if train[0].dim() != 3:
        raise ValueError(f"an attentive probe needs token features [N, T, D], got {tuple(train[0].shape)}")
    dim, classes = train[0].shape[-1], num_classes(train[1], val[1])
    return training.sweep(lambda: _OnTensor(AttentivePoolingHead(dim, classes, num_heads, num_queries)), train, val)


def as_training(value: ProbeTraining | Mapping[str, Any] | None) -> ProbeTraining:
    """A :class:`ProbeTraining` from itself or from its arguments (keys checked); None: the defaults."""
    if isinstance(value, Mapping):
        value = {key: tuple(v) if isinstance(v, list) else v for key, v in value.items()}
    return settings_from(ProbeTraining, value, "sweep")


class _Probe(ABC):
    """The frozen model's ``feature_key`` on the ``train`` and ``val`` splits (an ImageSplit or its arguments),
    probed with a ``sweep`` (a ProbeTraining or its arguments). ``part`` runs one model of a ModelSeries;
    ``batch_transform`` adds the model's other inputs (see :mod:`~polymodal.train.evaluators.features`), e.g.
    ``{_target_: polymodal.data.multimodal.prefix.FixedPrefixLengths, length: N}`` runs an AIM encoder without its
    prefix-causal mask (a prefix of all N patches: bidirectional features, as AIM probes)."""

    def __init__(
        self,
        train: ImageSplit | Mapping[str, Any],
        val: ImageSplit | Mapping[str, Any],
        feature_key: str = "features",
        part: str | None = None,
        image_key: str = IMAGE,
        pool: Pool = "none",
        sweep: ProbeTraining | Mapping[str, Any] | None = None,
        extract_batch_size: int = 64,
        batch_transform: BatchTransform | None = None,
    ) -> None:
        self.train, self.val = settings_from(ImageSplit, train, "train"), settings_from(ImageSplit, val, "val")
        if self.train.label_key is None or self.val.label_key is None:
            raise ValueError("a probe needs labels: give both splits a label_key")
        self.feature_key, self.part, self.image_key, self.pool = feature_key, part, image_key, pool
        self.training = as_training(sweep)
        self.extract_batch_size = extract_batch_size
        self.batch_transform = batch_transform

    @abstractmethod
    def fit(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> ProbeResult:
        """The probe's sweep on the (features, labels) of the train and the val split."""

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        """The best sweep point, the accuracy of always answering the training split's most frequent class, and the
        number of held-out samples both are measured on."""
        train, val = self.features(context)
        baseline = majority_accuracy(train[1], val[1])
        return {**self.fit(train, val).metrics(), "baseline_accuracy": baseline, SAMPLES: float(len(val[1]))}

    def features(self, context: EvalContext) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """(features, labels) of the train and the val split."""
        return tuple(self._features(context, split) for split in (self.train, self.val))

    def _features(self, context: EvalContext, split: ImageSplit) -> tuple[torch.Tensor, torch.Tensor]:
        values = image_features(
            context,
            split,
            self.feature_key,
            self.part,
            self.image_key,
            self.pool,
            self.extract_batch_size,
            self.batch_transform,
        )
        return values["features"], values["label"]


class LinearProbe(_Probe):
    """Linear probe on ``[N, D]`` features (``pool: mean`` or ``first`` reduces ``[N, T, D]`` tokens first); its
    arguments are the probes' own (:class:`_Probe`)."""

    def fit(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> ProbeResult:
        return fit_linear_probe(train, val, self.training)


class AttentiveProbe(_Probe):
    """Attentive probe on ``[N, T, D]`` patch features: ``num_queries`` learned queries, ``num_heads`` heads."""

    def __init__(
        self,
        train: ImageSplit | Mapping[str, Any],
        val: ImageSplit | Mapping[str, Any],
        feature_key: str = "features",
        part: str | None = None,
        image_key: str = IMAGE,
        sweep: ProbeTraining | Mapping[str, Any] | None = None,
        num_heads: int = 1,
        num_queries: int = 1,
        extract_batch_size: int = 64,
        batch_transform: BatchTransform | None = None,
    ) -> None:
        super().__init__(train, val, feature_key, part, image_key, "none", sweep, extract_batch_size, batch_transform)
        self.num_heads, self.num_queries = num_heads, num_queries

    def fit(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> ProbeResult:
        return fit_attentive_probe(train, val, self.training, self.num_heads, self.num_queries)
