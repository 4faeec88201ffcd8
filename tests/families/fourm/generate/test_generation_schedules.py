"""Chained generation schedules: 4M's token counts, temperature schedules, chaining and the YAML/dict form."""

import math

import numpy as np
import pytest

from polymodal.families.fourm.generate.schedules import (
    GenerationStep,
    TargetSettings,
    build_schedule,
    cosine_token_schedule,
    linear_token_schedule,
    schedule_from_dict,
    temperature_schedule,
)
from polymodal.families.fourm.modalities import ModalityRegistry

REGISTRY = ModalityRegistry.from_config(
    ["rgb@224", "tok_rgb@224", "tok_clip@224", "caption", "det"], {"det": {"encoder": False}}
)


def test_token_schedules_match_4m_vectors():
    assert cosine_token_schedule(8, 196) == [7, 21, 32, 38, 38, 32, 21, 7]
    assert linear_token_schedule(25, 196) == [8] * 21 + [7] * 4
    assert cosine_token_schedule(1, 196) == [196] and linear_token_schedule(1, 5) == [5]
    for steps, total in ((1, 196), (3, 196), (12, 196), (49, 196), (8, 16), (16, 16), (5, 6)):
        counts = cosine_token_schedule(steps, total)
        assert sum(counts) == total and len(counts) == steps and min(counts) >= 0
    assert cosine_token_schedule(8, 16) == [1, 2, 2, 3, 3, 3, 2, 0]  # 4M's rounding overshoots by one here


def naive_onex(max_t, min_t, token_schedule, power):
    """4M's onex temperatures, written with numpy as upstream computes them."""
    x = np.linspace(1, 100, num=sum(token_schedule))
    y = 1 / (x**power)
    y = (y - y.min()) / (y - y.min()).max()
    done = np.cumsum(token_schedule) / np.sum(token_schedule)
    return [max(min_t + (max_t - min_t) * (1 - d) * v, 1e-9) for v, d in zip(y, done, strict=False)]


def test_temperature_schedules():
    tokens = linear_token_schedule(4, 20)  # [5, 5, 5, 5]
    assert temperature_schedule("constant", 2.0, tokens) == [2.0] * 4
    assert temperature_schedule("linear", 2.0, tokens) == pytest.approx([2.0, 1.5, 1.0, 0.5])
    tokens = linear_token_schedule(49, 196)
    assert temperature_schedule("onex:0.5:0.5", 6.0, tokens) == pytest.approx(naive_onex(6.0, 0.5, tokens, 0.5))
    assert temperature_schedule("linear", 0.0, tokens)[0] == 1e-9
    with pytest.raises(ValueError, match="onex:<min_t>:<power>"):
        temperature_schedule("onex:0.5", 1.0, tokens)
    with pytest.raises(ValueError, match="unknown temperature schedule"):
        temperature_schedule("cosine", 1.0, tokens)


def test_chain_grows_guidance_domains_and_takes_int_cfg():
    schedule = build_schedule(
        ["caption"],
        [
            TargetSettings("tok_clip@224", scheme="roar", steps=2, cfg_scale=3),
            TargetSettings("tok_rgb@224", steps=2, token_schedule="linear", temperature=0.5),
            TargetSettings("det", temperature=0.3),
        ],
        REGISTRY,
        cfg_grow_conditioning=True,
        top_p=0.8,
    )
    assert schedule.targets == ("tok_clip@224", "tok_rgb@224", "det")
    assert schedule.steps == (
        GenerationStep("tok_clip@224", "roar", 98, 1.0, 3.0, ("caption",)),
        GenerationStep("tok_clip@224", "roar", 98, 1.0, 3.0, ("caption",)),
        GenerationStep("tok_rgb@224", "maskgit", 98, 0.5, 1.0, ("caption", "tok_clip@224")),
        GenerationStep("tok_rgb@224", "maskgit", 98, 0.5, 1.0, ("caption", "tok_clip@224")),
        GenerationStep("det", "autoregressive", None, 0.3, 1.0, ("caption", "tok_clip@224", "tok_rgb@224")),
    )
    assert isinstance(schedule.steps[0].cfg_scale, float) and schedule.top_p == 0.8


def test_roar_always_uses_the_linear_token_schedule():
    schedule = build_schedule([], [TargetSettings("tok_rgb@224", scheme="roar", steps=8)], REGISTRY)
    assert [step.num_tokens for step in schedule.steps] == linear_token_schedule(8, 196)


def test_dict_form_with_hyphens_equals_the_python_form():
    config = {
        "cond_domains": "caption",
        "target_domains": "tok_clip@224-tok_rgb@224",
        "tokens_per_target": 196,
        "autoregression_schemes": "roar-roar",
        "decoding_steps": "49-25",
        "token_decoding_schedules": "linear",
        "temps": "6.0-0.5",
        "temp_schedules": "onex:0.5:0.5-constant",
        "cfg_scales": 3.0,
        "cfg_schedules": "constant",
        "cfg_grow_conditioning": True,
        "top_p": 0.9,
        "top_k": 0.0,
    }
    python = build_schedule(
        ["caption"],
        [
            TargetSettings("tok_clip@224", "roar", 49, "linear", 6.0, "onex:0.5:0.5", 3.0),
            TargetSettings("tok_rgb@224", "roar", 25, "linear", 0.5, "constant", 3.0),
        ],
        REGISTRY,
        cfg_grow_conditioning=True,
        top_p=0.9,
    )
    assert schedule_from_dict(config, REGISTRY) == python
    listed = {**config, "target_domains": ["tok_clip@224", "tok_rgb@224"], "decoding_steps": [49, 25]}
    assert schedule_from_dict(listed, REGISTRY) == python
    assert len(python.steps) == 49 + 25 and math.isclose(python.steps[-1].temperature, 0.5)


def test_dict_form_defaults_pick_the_scheme_by_kind():
    schedule = schedule_from_dict({"cond_domains": ["rgb@224"], "target_domains": "tok_rgb@224-caption"}, REGISTRY)
    assert [step.scheme for step in schedule.steps] == ["maskgit"] * 8 + ["autoregressive"]
    assert schedule.top_k == 0 and schedule.steps[0].cfg_domains == ("rgb@224",)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"target_domains": "tok_depth@224"}, "unknown target modalities"),
        ({"cond_domains": "nope", "target_domains": "caption"}, "unknown conditioning modalities"),
        ({"cond_domains": "det", "target_domains": "caption"}, "cannot condition"),
        ({"target_domains": "rgb@224"}, "cannot be a target"),
        ({"cond_domains": "caption", "target_domains": "caption"}, "both conditioning and target"),
        ({"target_domains": "caption", "autoregression_schemes": "maskgit"}, "must be autoregressive"),
        ({"target_domains": "tok_rgb@224", "autoregression_schemes": "autoregressive"}, "maskgit or roar"),
        ({"target_domains": "tok_rgb@224", "autoregression_schemes": "greedy"}, "unknown scheme"),
        ({"target_domains": "tok_rgb@224", "cfg_schedules": "cosine"}, "cfg schedule"),
        ({"target_domains": "tok_rgb@224", "decoding_steps": 500}, "500 decoding steps for only 196"),
        ({"target_domains": "tok_rgb@224-caption", "temps": "1-2-3"}, "3 values"),
        ({"target_domains": "tok_rgb@224", "decoding_steps": "many"}, "not a number"),
        ({"target_domains": "tok_rgb@224", "top_p": 1.5}, "top_p"),
        ({"target_domains": "tok_rgb@224", "steps": 4}, "unknown generation schedule keys"),
        ({"cond_domains": "caption"}, "needs target_domains"),
    ],
)
def test_bad_schedules_raise_clear_errors(config, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_dict(config, REGISTRY)
