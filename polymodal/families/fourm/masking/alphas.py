"""4M's mixture of Dirichlets: how a sample's input and target token budgets are split across modalities.

A mixture has K components. Each sample draws one component (uniformly, or by ``sampling_weights``), then splits
its input budget by a draw from ``Dirichlet(input_alphas[k])`` and its target budget by a draw from
``Dirichlet(target_alphas[k])``. An alpha of 0 means "never" and is raised to :data:`MIN_ALPHA` (as upstream);
1000 puts ~all budget on one modality (rgb2all); 0.01-0.1 gives near one-hot splits; 10 an even spread.
``keep[modality][k]`` sets how a sequence modality's keep probability is drawn in component k:
``random`` (U(0, 1)), ``all`` (1: the whole sequence is input) or ``binary`` (0 or 1 with equal odds).

Config forms (4M's ``alphas_mixture`` YAML files; both are read by :meth:`DirichletMixture.from_config`)::

    # simple: components drawn uniformly
    rgb@224: {input_alphas: [1000.0, 0.5], target_alphas: [0., 0.]}
    caption: {input_alphas: [0., 0.5], target_alphas: [0.5, 0.5], keep: [random, random]}

    # weighted
    sampling_weights: [1.0, 1.0]
    alphas_mixture:
      rgb@224: {input_alphas: [1000.0, 0.5], target_alphas: [0., 0.]}
      caption: {input_alphas: [0., 0.5], target_alphas: [0.5, 0.5], keep: [random, all]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from polymodal.families.fourm.modalities import ModalitySpec

KEEP_SCHEMES: tuple[str, ...] = ("random", "all", "binary")
MIN_ALPHA = 1e-9
ENTRY_KEYS = frozenset({"input_alphas", "target_alphas", "keep"})


@dataclass(frozen=True)
class DirichletMixture:
    """Per component k and modality m: ``input_alphas[k][m]``, ``target_alphas[k][m]`` and, for sequence
    modalities, ``keep[name][k]``. ``modalities`` is the registry order (sorted names)."""

    modalities: tuple[str, ...]
    input_alphas: tuple[tuple[float, ...], ...]
    target_alphas: tuple[tuple[float, ...], ...]
    keep: Mapping[str, tuple[str, ...]]
    sampling_weights: tuple[float, ...] | None = None

    @property
    def num_components(self) -> int:
        return len(self.input_alphas)

    def input_concentration(self) -> torch.Tensor:
        """(K, M) float64 Dirichlet concentrations of the input split, zeros raised to :data:`MIN_ALPHA`."""
        return torch.tensor(self.input_alphas, dtype=torch.float64).clamp(min=MIN_ALPHA)

    def target_concentration(self) -> torch.Tensor:
        """(K, M) float64 Dirichlet concentrations of the target split, zeros raised to :data:`MIN_ALPHA`."""
        return torch.tensor(self.target_alphas, dtype=torch.float64).clamp(min=MIN_ALPHA)

    def keep_schemes(self, modality: str) -> tuple[str, ...]:
        """The keep scheme of a sequence ``modality`` in each component (``random`` when not configured)."""
        return self.keep.get(modality, ("random",) * self.num_components)

    @classmethod
    def from_entries(
        cls,
        entries: Mapping[str, Mapping[str, Any]],
        modalities: Mapping[str, ModalitySpec],
        sampling_weights: Sequence[float] | None = None,
    ) -> DirichletMixture:
        """From ``{modality: {input_alphas: [...], target_alphas: [...], keep: [...]}}`` (4M's simple form).

        ``modalities`` (a :class:`ModalityRegistry`) must hold exactly the modalities of ``entries``.
        """
        _check_same_modalities(entries, modalities)
        names = tuple(modalities)
        num_components = None
        inputs, targets, keep = [], [], {}
        for name in names:
            entry = entries[name]
            if not isinstance(entry, Mapping):
                raise ValueError(f"alphas of modality {name!r} must be a mapping, got {type(entry).__name__}")
            unknown = set(entry) - ENTRY_KEYS
            if unknown:
                raise ValueError(
                    f"alphas of modality {name!r}: unknown key(s) {sorted(unknown)}; known {sorted(ENTRY_KEYS)}"
                )
            for key in ("input_alphas", "target_alphas"):
                if key not in entry:
                    raise ValueError(f"alphas of modality {name!r} lack {key!r}")
            inputs.append(_alpha_list(entry["input_alphas"], f"{name}.input_alphas"))
            targets.append(_alpha_list(entry["target_alphas"], f"{name}.target_alphas"))
            num_components = num_components or len(inputs[-1])
            for key, values in (("input_alphas", inputs[-1]), ("target_alphas", targets[-1])):
                if len(values) != num_components:
                    raise ValueError(
                        f"alphas of modality {name!r}: {key} has {len(values)} components, expected {num_components} "
                        f"(the length of {names[0]}.input_alphas)"
                    )
            if "keep" in entry:
                keep[name] = _keep_list(entry["keep"], modalities[name], num_components)
        return cls(
            modalities=names,
            input_alphas=tuple(zip(*inputs, strict=True)),
            target_alphas=tuple(zip(*targets, strict=True)),
            keep=keep,
            sampling_weights=_sampling_weights(sampling_weights, num_components),
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], modalities: Mapping[str, ModalitySpec]) -> DirichletMixture:
        """From either YAML form: ``{sampling_weights, alphas_mixture}`` or the simple per-modality mapping."""
        if not isinstance(config, Mapping):
            raise ValueError(f"an alphas config must be a mapping, got {type(config).__name__}")
        if "alphas_mixture" not in config:
            return cls.from_entries(config, modalities)
        extra = set(config) - {"alphas_mixture", "sampling_weights"}
        if extra:
            raise ValueError(f"alphas config: unknown top-level key(s) {sorted(extra)} next to 'alphas_mixture'")
        return cls.from_entries(config["alphas_mixture"], modalities, config.get("sampling_weights"))

    @classmethod
    def from_yaml(cls, path: str | Path, modalities: Mapping[str, ModalitySpec]) -> DirichletMixture:
        """Read an upstream ``alphas_mixture`` YAML file (either form) with ``yaml.safe_load``."""
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file)
        try:
            return cls.from_config(config, modalities)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @classmethod
    def single(
        cls,
        modalities: Mapping[str, ModalitySpec],
        input_alpha: float | str,
        target_alpha: float | str,
        keep: str = "random",
    ) -> DirichletMixture:
        """One component with the same alpha for every modality (4M's ``input_alphas: "0.5"``)."""
        entry = {
            "input_alphas": [_alpha(input_alpha, "input_alpha")],
            "target_alphas": [_alpha(target_alpha, "target_alpha")],
        }
        entries = {
            name: {**entry, **({"keep": [keep]} if spec.is_sequence else {})} for name, spec in modalities.items()
        }
        return cls.from_entries(entries, modalities)


def _check_same_modalities(entries: Mapping[str, Any], modalities: Mapping[str, ModalitySpec]) -> None:
    if not isinstance(entries, Mapping):
        raise ValueError(f"alphas must map modality names to entries, got {type(entries).__name__}")
    not_registered = sorted(set(entries) - set(modalities))
    not_configured = sorted(set(modalities) - set(entries))
    if not_registered:
        raise ValueError(
            f"alphas config has modalities {not_registered} that are not in the registry {list(modalities)}"
        )
    if not_configured:
        raise ValueError(
            f"registry modalities {not_configured} have no alphas in the config (it has {sorted(entries)})"
        )
    if not entries:
        raise ValueError("alphas config has no modalities")


def _alpha(value: Any, where: str) -> float:
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{where} must be finite and >= 0, got {value!r}")
    return alpha


def _alpha_list(values: Any, where: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{where} must be a non-empty list with one alpha per mixture component, got {values!r}")
    return tuple(_alpha(value, f"{where}[{i}]") for i, value in enumerate(values))


def _keep_list(values: Any, spec: ModalitySpec, num_components: int) -> tuple[str, ...]:
    where = f"{spec.name}.keep"
    if not spec.is_sequence:
        raise ValueError(f"{where}: only sequence modalities have a keep scheme; {spec.name!r} is a {spec.kind}")
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != num_components:
        raise ValueError(f"{where} must be a list of {num_components} schemes (one per component), got {values!r}")
    for value in values:
        if value not in KEEP_SCHEMES:
            raise ValueError(f"{where}: unknown keep scheme {value!r}; expected one of {KEEP_SCHEMES}")
    return tuple(values)


def _sampling_weights(weights: Sequence[float] | None, num_components: int) -> tuple[float, ...] | None:
    if weights is None:
        return None
    if isinstance(weights, str) or not isinstance(weights, Sequence) or len(weights) != num_components:
        raise ValueError(f"sampling_weights must be a list of {num_components} weights, got {weights!r}")
    checked = tuple(_alpha(weight, f"sampling_weights[{i}]") for i, weight in enumerate(weights))
    if sum(checked) <= 0:
        raise ValueError(f"sampling_weights must not all be 0, got {list(weights)}")
    return checked
