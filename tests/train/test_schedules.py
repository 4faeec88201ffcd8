import itertools
import logging
import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from polymodal.train.optim import build_optimizer
from polymodal.train.schedules import Schedule, lr_multiplier


def naive_multiplier(step, total, warmup, kind, min_ratio=0.0, decay_fraction=0.2, init=0.0, wsd_decay="linear"):
    """Independent piecewise reference written straight from the documented formulas."""
    if step < warmup:
        return init + (1 - init) * (step + 1) / warmup
    if kind == "constant":
        return 1.0
    step = min(step, total)
    if kind == "cosine":
        t = (step - warmup) / (total - warmup)
        return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2
    if kind == "linear":
        t = (step - warmup) / (total - warmup)
        return 1 - (1 - min_ratio) * t
    start = total - decay_fraction * total
    if step < start:
        return 1.0
    t = (step - start) / (total - start)
    remaining = 1 - math.sqrt(t) if wsd_decay == "sqrt" else 1 - t
    return min_ratio + (1 - min_ratio) * remaining


@pytest.mark.parametrize(
    "kind, wsd_decay",
    [("cosine", "linear"), ("linear", "linear"), ("constant", "linear"), ("wsd", "linear"), ("wsd", "sqrt")],
)
def test_matches_naive_reference_at_every_step(kind, wsd_decay):
    total, warmup, min_ratio, init = 120, 10, 0.1, 0.05
    for step in range(total + 5):
        got = lr_multiplier(
            step,
            total,
            warmup,
            kind,
            min_ratio=min_ratio,
            decay_fraction=0.25,
            warmup_init=init,
            wsd_decay=wsd_decay,
        )
        want = naive_multiplier(step, total, warmup, kind, min_ratio, 0.25, init, wsd_decay)
        assert got == pytest.approx(want, abs=1e-12), (kind, step)


def test_warmup_convention():
    # step 0 already moves the weights; the last warmup step reaches 1.
    assert lr_multiplier(0, 100, 4, "cosine") == pytest.approx(0.25)
    assert lr_multiplier(3, 100, 4, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(4, 100, 4, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(0, 100, 4, "cosine", warmup_init=0.2) == pytest.approx(0.2 + 0.8 / 4)
    assert lr_multiplier(0, 100, 0, "cosine") == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_midpoint_and_end(kind):
    warmup, total, min_ratio = 20, 220, 0.1
    assert lr_multiplier(120, total, warmup, kind, min_ratio=min_ratio) == pytest.approx((1 + min_ratio) / 2)
    assert lr_multiplier(total, total, warmup, kind, min_ratio=min_ratio) == pytest.approx(min_ratio)
    assert lr_multiplier(total + 50, total, warmup, kind, min_ratio=min_ratio) == pytest.approx(min_ratio)
    values = [lr_multiplier(s, total, warmup, kind, min_ratio=min_ratio) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_cosine_quarter_point():
    assert lr_multiplier(25, 100, 0, "cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_constant_stays_one_after_warmup():
    assert [lr_multiplier(s, 10, 2, "constant") for s in (2, 9, 10, 30)] == [1.0, 1.0, 1.0, 1.0]


def test_wsd_plateau_then_decay():
    kwargs = {"total_steps": 100, "warmup_steps": 10, "kind": "wsd", "min_ratio": 0.0, "decay_fraction": 0.2}
    assert all(lr_multiplier(s, **kwargs) == 1.0 for s in range(10, 81))
    assert lr_multiplier(90, **kwargs) == pytest.approx(0.5)
    assert lr_multiplier(100, **kwargs) == pytest.approx(0.0)
    assert lr_multiplier(90, **kwargs, wsd_decay="sqrt") == pytest.approx(1 - math.sqrt(0.5))
    assert lr_multiplier(95, **{**kwargs, "min_ratio": 0.2}) == pytest.approx(0.2 + 0.8 * 0.25)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"warmup_steps": 11}, "exceeds total_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"step": -1}, "step"),
        ({"total_steps": 0, "warmup_steps": 0}, "total_steps"),
        ({"kind": "exponential"}, "unknown schedule kind 'exponential'"),
        ({"min_ratio": -0.1}, "min_ratio"),
        ({"warmup_init": 1.5}, "warmup_init"),
        ({"decay_fraction": 0.0}, "decay_fraction"),
        ({"decay_fraction": 1.5}, "decay_fraction"),
        ({"wsd_decay": "cubic"}, "wsd_decay"),
        ({"kind": "wsd", "warmup_steps": 5, "decay_fraction": 0.6}, "overlaps the wsd decay"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    args = {"step": 0, "total_steps": 10, "warmup_steps": 2, "kind": "cosine"} | kwargs
    with pytest.raises(ValueError, match=message):
        lr_multiplier(**args)


def test_schedule_validates_at_construction():
    with pytest.raises(ValueError, match="decay_fraction"):
        Schedule(kind="wsd", decay_fraction=2.0)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        Schedule(kind="step")


def test_schedule_from_config_matches_function():
    schedule = instantiate(
        {
            "_target_": "polymodal.train.schedules.Schedule",
            "kind": "wsd",
            "warmup_steps": 5,
            "min_ratio": 0.1,
            "decay_fraction": 0.3,
            "wsd_decay": "sqrt",
            "warmup_init": 0.01,
        }
    )
    for step in (0, 4, 50, 80, 99, 100):
        assert schedule(step, 100) == lr_multiplier(
            step, 100, 5, "wsd", min_ratio=0.1, decay_fraction=0.3, warmup_init=0.01, wsd_decay="sqrt"
        )


def test_apply_sets_scaled_lr_per_group():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = build_optimizer(model, lr=2e-3, lr_scales={"1.*": 0.5})
    schedule = Schedule(kind="cosine", warmup_steps=10, min_ratio=0.1)
    multiplier = schedule.apply(optimizer, step=60, total_steps=110)
    assert multiplier == pytest.approx(0.55)
    lrs = {group["lr_scale"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {1.0: pytest.approx(2e-3 * 0.55), 0.5: pytest.approx(2e-3 * 0.55 * 0.5)}


def test_apply_requires_base_lr():
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="base_lr"):
        Schedule().apply(optimizer, 0, 10)


def test_a_run_shorter_than_the_warmup_warms_up_for_a_tenth_of_it(caplog):
    schedule = Schedule(kind="cosine", warmup_steps=50, min_ratio=0.1)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        fitted = schedule.for_run(20)
    assert fitted.warmup_steps == 2 and fitted.min_ratio == 0.1
    assert "warmup_steps (50) exceeds total_steps (20): warming up for 2 steps" in caplog.text
    assert [round(fitted(step, 20), 6) for step in (0, 1)] == [0.5, 1.0]
    assert schedule.for_run(50) == schedule  # a warmup that fits is left alone


def test_a_run_the_schedule_cannot_fit_is_refused_before_training():
    with pytest.raises(ValueError, match="overlaps the wsd decay phase"):
        Schedule(kind="wsd", warmup_steps=90, decay_fraction=0.2).for_run(100)
    with pytest.raises(ValueError, match="total_steps must be > 0"):
        Schedule().for_run(0)
