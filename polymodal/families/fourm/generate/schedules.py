"""Chained 4M generation schedules: which modality is generated when, how, at what temperature and guidance.

A schedule is a flat list of :class:`GenerationStep` for target modalities generated one after the other (chained):
each finished target becomes an input of the next. Per target:

* ``scheme``: ``maskgit`` (images: every pending position is queried, the most probable sampled tokens are kept),
  ``roar`` (images: a random subset of pending positions is queried and all of them kept) or ``autoregressive``
  (sequences: one step that decodes a span token by token);
* ``steps`` and ``token_schedule`` (``cosine`` | ``linear``; ROAR is always linear): how many tokens each step
  fills, with 4M's exact counts (:func:`cosine_token_schedule`, :func:`linear_token_schedule`);
* ``temperature`` and ``temperature_schedule``: ``constant``, ``linear`` (decays with the tokens left) or
  ``onex:<min_t>:<power>`` (a ``1/x**power`` curve, :func:`temperature_schedule`);
* ``cfg_scale``: classifier-free guidance ``l_u + s·(l_c − l_u)`` against the ``cfg_domains`` emptied (the
  conditioning domains, grown by each finished target with ``cfg_grow_conditioning``). 1 (or no domain) = none.

From Python (:func:`build_schedule` with :class:`TargetSettings`) or from 4M's YAML/dict form
(:func:`schedule_from_dict`), where per-target values are hyphen-separated (or YAML lists) and one value applies
to every target::

    cond_domains: caption
    target_domains: tok_clip@224-tok_rgb@224
    autoregression_schemes: roar-roar
    decoding_steps: 49-25
    token_decoding_schedules: linear
    temps: 6.0-0.5
    temp_schedules: onex:0.5:0.5-constant
    cfg_scales: 3.0
    cfg_schedules: constant
    cfg_grow_conditioning: true
    top_p: 0.9
    top_k: 0.0

Unlike upstream, an ``int`` cfg scale works, and ``cfg_grow_conditioning`` also adds autoregressive targets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polymodal.families.fourm.modalities import ModalitySpec, check_task_modalities

SCHEMES = ("maskgit", "roar", "autoregressive")
TOKEN_SCHEDULES = ("cosine", "linear")
CFG_SCHEDULES = ("constant",)
MIN_TEMPERATURE = 1e-9
ONEX_X_RANGE = (1.0, 100.0)  # 4M evaluates 1/x**power on linspace(1, 100, total_tokens)

DICT_KEYS = {
    "cond_domains",
    "target_domains",
    "tokens_per_target",
    "autoregression_schemes",
    "decoding_steps",
    "token_decoding_schedules",
    "temps",
    "temp_schedules",
    "cfg_scales",
    "cfg_schedules",
    "cfg_grow_conditioning",
    "top_k",
    "top_p",
}


@dataclass(frozen=True)
class GenerationStep:
    """One sampler step: fill ``num_tokens`` positions of ``target`` (None: a whole autoregressive span)."""

    target: str
    scheme: str
    num_tokens: int | None
    temperature: float
    cfg_scale: float
    cfg_domains: tuple[str, ...]


@dataclass(frozen=True)
class GenerationSchedule:
    """The chained steps, the conditioning domains, and the top-k / top-p filters applied at every step."""

    cond_domains: tuple[str, ...]
    steps: tuple[GenerationStep, ...]
    top_k: int | float = 0
    top_p: float = 0.0

    @property
    def targets(self) -> tuple[str, ...]:
        """The target modalities in generation order."""
        return tuple(dict.fromkeys(step.target for step in self.steps))


@dataclass(frozen=True)
class TargetSettings:
    """How to generate one target modality (see the module docstring). ``num_tokens``: positions to fill (default:
    the whole grid); ``scheme`` None: ``maskgit`` for images, ``autoregressive`` for sequences."""

    modality: str
    scheme: str | None = None
    steps: int = 8
    token_schedule: str = "cosine"
    temperature: float = 1.0
    temperature_schedule: str = "constant"
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    num_tokens: int | None = None


def cosine_token_schedule(num_steps: int, total_tokens: int) -> list[int]:
    """Tokens per step along a cosine from 1 to 0 sampled at ``i / num_steps``: ``round(T·(s_i − s_{i+1}))``, the
    last step takes the remainder (when rounding overshoots, the largest steps give tokens back; upstream would go
    negative). ``(8, 196)`` → ``[7, 21, 32, 38, 38, 32, 21, 7]``."""
    _check_steps(num_steps, total_tokens)
    levels = [0.5 * (1 + math.cos(math.pi * i / num_steps)) for i in range(num_steps)]
    counts = [round(total_tokens * (high - low)) for high, low in zip(levels[:-1], levels[1:], strict=True)]
    counts.append(total_tokens - sum(counts))
    while counts[-1] < 0:  # rounding overshot (few tokens): take the excess back from the largest steps
        counts[counts.index(max(counts[:-1]))] -= 1
        counts[-1] += 1
    return counts


def linear_token_schedule(num_steps: int, total_tokens: int) -> list[int]:
    """An even split, larger chunks first. ``(25, 196)`` → 21 × 8 then 4 × 7."""
    _check_steps(num_steps, total_tokens)
    bounds = [total_tokens * i // num_steps for i in range(num_steps + 1)]
    return sorted((high - low for low, high in zip(bounds[:-1], bounds[1:], strict=True)), reverse=True)


def _check_steps(num_steps: int, total_tokens: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"decoding steps must be an int >= 1, got {num_steps!r}")
    if total_tokens < num_steps:
        raise ValueError(f"{num_steps} decoding steps for only {total_tokens} tokens; use at most {total_tokens}")


def temperature_schedule(name: str, temperature: float, token_schedule: Sequence[int]) -> list[float]:
    """Temperature of each step of ``token_schedule`` (4M's three schedules, clipped at 1e-9).

    * ``constant``: ``temperature`` at every step;
    * ``linear``: ``temperature`` first, then ``temperature · (tokens left after the previous step) / total``;
    * ``onex:<min_t>:<power>``: ``min_t + (temperature − min_t) · y_i · (1 − done_i / total)`` with ``y`` =
      ``1/x**power`` on ``linspace(1, 100, total)`` rescaled to [0, 1] and read at the step index ``i`` (as 4M
      does), ``done_i`` the tokens filled after step ``i``.
    """
    total = sum(token_schedule)
    done = [sum(token_schedule[: i + 1]) for i in range(len(token_schedule))]
    if name == "constant":
        temps = [float(temperature)] * len(token_schedule)
    elif name == "linear":
        temps = [float(temperature)] + [temperature * (total - d) / total for d in done[:-1]]
    elif name.startswith("onex"):
        min_t, power = _onex_parameters(name)
        curve = _onex_curve(total, power)[: len(done)]  # read at the step index, as 4M
        temps = [min_t + (temperature - min_t) * y * (1 - d / total) for y, d in zip(curve, done, strict=True)]
    else:
        raise ValueError(f"unknown temperature schedule {name!r}; expected constant, linear or onex:<min_t>:<power>")
    return [max(t, MIN_TEMPERATURE) for t in temps]


def _onex_parameters(name: str) -> tuple[float, float]:
    parts = name.split(":")
    try:
        if len(parts) != 3 or parts[0] != "onex":
            raise ValueError
        return float(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"temperature schedule {name!r} must read onex:<min_t>:<power>, e.g. onex:0.5:0.5") from None


def _onex_curve(total: int, power: float) -> list[float]:
    low, high = ONEX_X_RANGE
    xs = [low + (high - low) * i / (total - 1) for i in range(total)] if total > 1 else [low]
    ys = [x**-power for x in xs]
    floor = min(ys)
    span = max(ys) - floor
    return [(y - floor) / span if span > 0 else 0.0 for y in ys]


def build_schedule(
    cond_domains: Sequence[str],
    targets: Sequence[TargetSettings],
    modalities: Mapping[str, ModalitySpec],
    cfg_grow_conditioning: bool = False,
    top_k: int | float = 0,
    top_p: float = 0.0,
) -> GenerationSchedule:
    """The chained steps for ``targets`` in order, checked against the model's ``modalities`` (names, which side
    embeds each, scheme vs kind)."""
    cond_domains = list(cond_domains)
    if not targets:
        raise ValueError("a generation schedule needs at least one target modality")
    check_task_modalities(modalities, cond_domains, [t.modality for t in targets], input_role="conditioning")
    _check_filters(top_k, top_p)
    growing = list(cond_domains)
    steps: list[GenerationStep] = []
    for target in targets:
        steps.extend(_target_steps(target, modalities[target.modality], tuple(growing)))
        if cfg_grow_conditioning:
            growing.append(target.modality)
    return GenerationSchedule(tuple(cond_domains), tuple(steps), top_k, float(top_p))


def _check_filters(top_k: int | float, top_p: float) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 or a fraction of the vocabulary, got {top_k!r}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must lie in [0, 1] (0: off), got {top_p!r}")


def _target_steps(target: TargetSettings, spec: ModalitySpec, cfg_domains: tuple[str, ...]) -> list[GenerationStep]:
    name = target.modality
    scheme = target.scheme or ("autoregressive" if spec.is_sequence else "maskgit")
    if scheme not in SCHEMES:
        raise ValueError(f"target {name!r}: unknown scheme {scheme!r}; expected one of {SCHEMES}")
    if spec.is_sequence != (scheme == "autoregressive"):
        expected = "autoregressive" if spec.is_sequence else "maskgit or roar"
        raise ValueError(f"target {name!r} is a {spec.kind}: its scheme must be {expected}, got {scheme!r}")
    if target.cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"target {name!r}: cfg schedule {target.cfg_schedule!r} is not supported; use constant")
    if isinstance(target.cfg_scale, bool) or not isinstance(target.cfg_scale, (int, float)):
        raise ValueError(f"target {name!r}: cfg_scale must be a number, got {target.cfg_scale!r}")
    if target.temperature < 0:
        raise ValueError(f"target {name!r}: temperature must be >= 0, got {target.temperature}")
    cfg_scale = float(target.cfg_scale)
    if scheme == "autoregressive":
        return [GenerationStep(name, scheme, None, float(target.temperature), cfg_scale, cfg_domains)]
    total = spec.num_positions() if target.num_tokens is None else target.num_tokens
    if not 1 <= total <= spec.num_positions():
        raise ValueError(f"target {name!r}: num_tokens must lie in 1..{spec.num_positions()}, got {total}")
    if scheme == "roar" or target.token_schedule == "linear":
        token_schedule = linear_token_schedule(target.steps, total)
    elif target.token_schedule == "cosine":
        token_schedule = cosine_token_schedule(target.steps, total)
    else:
        raise ValueError(f"target {name!r}: unknown token schedule {target.token_schedule!r}; use {TOKEN_SCHEDULES}")
    temps = temperature_schedule(target.temperature_schedule, target.temperature, token_schedule)
    return [
        GenerationStep(name, scheme, count, temp, cfg_scale, cfg_domains)
        for count, temp in zip(token_schedule, temps, strict=True)
    ]


def _per_target(config: Mapping[str, Any], key: str, count: int, default: Any) -> list[Any]:
    """``config[key]`` as one value per target: a hyphen-separated string or a list, one value meaning all."""
    value = config.get(key, default)
    if isinstance(value, str):
        values: list[Any] = value.split("-")
    elif isinstance(value, Sequence):
        values = list(value)
    else:
        values = [value]
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f"{key}: {len(values)} values {values} for {count} targets; give one or one per target")
    return values


def _number(key: str, value: Any, kind: type) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: {value!r} is not a number") from None
    if kind is int and float(value) != number:
        raise ValueError(f"{key}: {value!r} is not an integer")
    return number


def _domains(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key) or []
    names = value.split("-") if isinstance(value, str) else list(value)
    return [name.strip() for name in names if name.strip()]


def schedule_from_dict(config: Mapping[str, Any], modalities: Mapping[str, ModalitySpec]) -> GenerationSchedule:
    """A schedule from 4M's YAML/dict form (module docstring). Only ``target_domains`` is required; defaults:
    the scheme by kind, 8 cosine steps, temperature 1 constant, cfg 1, no top-k / top-p."""
    unknown = sorted(set(config) - DICT_KEYS)
    if unknown:
        raise ValueError(f"unknown generation schedule keys {unknown}; known: {sorted(DICT_KEYS)}")
    targets = _domains(config, "target_domains")
    if not targets:
        raise ValueError("the generation schedule needs target_domains")
    count = len(targets)
    columns = {
        "scheme": _per_target(config, "autoregression_schemes", count, None),
        "steps": [_number("decoding_steps", v, int) for v in _per_target(config, "decoding_steps", count, 8)],
        "token_schedule": _per_target(config, "token_decoding_schedules", count, "cosine"),
        "temperature": [_number("temps", v, float) for v in _per_target(config, "temps", count, 1.0)],
        "temperature_schedule": _per_target(config, "temp_schedules", count, "constant"),
        "cfg_scale": [_number("cfg_scales", v, float) for v in _per_target(config, "cfg_scales", count, 1.0)],
        "cfg_schedule": _per_target(config, "cfg_schedules", count, "constant"),
        "num_tokens": [
            None if v is None else _number("tokens_per_target", v, int)
            for v in _per_target(config, "tokens_per_target", count, None)
        ],
    }
    settings = [
        TargetSettings(name, **{column: values[index] for column, values in columns.items()})
        for index, name in enumerate(targets)
    ]
    top_k = config.get("top_k", 0)
    top_k = _number("top_k", top_k, int) if float(top_k) >= 1 else _number("top_k", top_k, float)
    return build_schedule(
        _domains(config, "cond_domains"),
        settings,
        modalities,
        cfg_grow_conditioning=bool(config.get("cfg_grow_conditioning", False)),
        top_k=top_k,
        top_p=_number("top_p", config.get("top_p", 0.0), float),
    )
