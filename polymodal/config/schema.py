"""Typed schema of a config: the ``experiment:`` section in full, the other top-level sections by name.

Sections typed ``Any`` (``model``, ``data``, ``optim``, ``loss``, ``metrics``, each entry of ``evaluators``) are
``_target_`` trees; they are checked when instantiated, not here. A field's ``metadata["rule"]`` is a value
constraint that :func:`polymodal.config.validation.validate_config` enforces after the type check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple


class Rule(NamedTuple):
    """A constraint on a well-typed value: ``holds(value)`` must be true, else "<key> <requirement>"."""

    holds: Callable[[Any], bool]
    requirement: str


POSITIVE = {"rule": Rule(lambda value: value > 0, "must be > 0")}
NON_NEGATIVE = {"rule": Rule(lambda value: value >= 0, "must be >= 0")}
NON_EMPTY = {"rule": Rule(lambda value: value != "", "must be a non-empty string")}


@dataclass
class NonFiniteConfig:
    """What to do on a non-finite loss or gradient.

    ``skip``: skip the optimizer step and count it; once more than ``max_skips`` steps in total were skipped
    the run stops (with a checkpoint). ``stop``: stop at the first one (with a checkpoint).
    """

    policy: Literal["skip", "stop"] = "skip"
    max_skips: int = field(default=10, metadata=NON_NEGATIVE)


@dataclass
class WandbConfig:
    """Weights & Biases. ``enabled: null`` means "when configured": a ``.wandb.yaml`` in the working directory
    or ``WANDB_API_KEY`` / ``WANDB_MODE`` in the environment. Unset fields fall back to ``.wandb.yaml``, then
    to wandb's own ``WANDB_*`` variables and defaults."""

    enabled: bool | None = None
    project: str | None = None
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class InitFromConfig:
    """Initialise weights from a checkpoint (an export, or a Hugging Face model directory): keep parameters matching
    ``include`` and not ``exclude`` (glob patterns), rename by prefix with ``rename``; ``strict`` requires every
    model parameter to load."""

    path: str | None = None
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    rename: dict[str, str] = field(default_factory=dict)
    strict: bool = False


@dataclass
class DistributedConfig:
    """The device mesh ``dp_replicate × dp_shard × cp × tp`` (product = world size) and how it is used.

    ``strategy``: ``fsdp`` shards parameters, gradients and optimizer state over dp_shard·cp (FSDP2);
    ``hsdp`` shards within groups of dp_shard·cp and replicates across ``dp_replicate`` groups; ``ddp``
    replicates over every data-parallel rank. ``dp_shard: -1`` takes whatever the other degrees leave.
    ``ep`` shards the experts of every mixture-of-experts layer over groups of ``ep`` of the ``dp_shard`` ranks
    (it adds no ranks; see :mod:`polymodal.train.parallel.mesh`).
    """

    strategy: Literal["fsdp", "hsdp", "ddp"] = "fsdp"
    dp_replicate: int = field(default=1, metadata=POSITIVE)
    dp_shard: int = -1
    tp: int = field(default=1, metadata=POSITIVE)
    cp: int = field(default=1, metadata=POSITIVE)
    ep: int = field(default=1, metadata=POSITIVE)  # expert parallel: MoE experts sharded over ep of the dp_shard ranks
    reshard_after_forward: bool = True  # FSDP2: free gathered parameters after forward (re-gather in backward)
    loss_parallel: bool = False  # TP: keep logits sharded over the vocabulary for the loss
    meta_init: bool = False  # build on the meta device, shard, then materialise and initialise
    timeout_minutes: float = field(default=30.0, metadata=POSITIVE)


@dataclass
class ExperimentConfig:
    name: str = field(default="run", metadata=NON_EMPTY)
    output_dir: str = field(default="runs/run", metadata=NON_EMPTY)
    total_steps: int = field(default=1000, metadata=POSITIVE)
    seed: int = 0
    resume: str = field(default="auto", metadata=NON_EMPTY)  # "auto", "none", or a checkpoint path
    torch_compile: bool = False  # compile each transformer block (the FSDP units); a model without blocks whole
    activation_checkpointing: bool = False
    log_every: int = field(default=10, metadata=POSITIVE)
    ckpt_every: int = field(default=500, metadata=POSITIVE)
    keep_last: int = field(default=3, metadata=POSITIVE)
    eval_every: int = field(default=500, metadata=POSITIVE)
    eval_steps: int = field(default=20, metadata=NON_NEGATIVE)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    grad_accum_steps: int = field(default=1, metadata=POSITIVE)
    grad_clip: float = field(default=1.0, metadata=NON_NEGATIVE)  # max global grad norm; 0 disables clipping
    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: bool = True
    debug: bool = False
    init_from: InitFromConfig = field(default_factory=InitFromConfig)
    freeze: list[str] = field(default_factory=list)  # fnmatch patterns of parameter names kept fixed (not trained)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    peak_flops: float | None = field(default=None, metadata=POSITIVE)  # overrides the device peak for MFU


@dataclass(kw_only=True)
class RootConfig:
    """The top-level sections. ``model``, ``data``, ``optim`` and ``loss`` are required."""

    model: Any
    data: Any
    optim: Any
    loss: Any
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    constants: dict[str, Any] = field(default_factory=dict)
    metrics: Any = None
    evaluators: dict[str, Any] = field(default_factory=dict)  # name -> evaluator ``_target_`` node
