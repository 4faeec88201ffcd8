"""Config system: YAML composition, CLI overrides, interpolation, schema checks, ``_target_`` instantiation."""

from polymodal.config.errors import ConfigError, did_you_mean
from polymodal.config.instantiate import instantiate
from polymodal.config.loader import load_config, save_config
from polymodal.config.overrides import apply_overrides, parse_override
from polymodal.config.resolvers import register_resolvers
from polymodal.config.schema import (
    DistributedConfig,
    ExperimentConfig,
    InitFromConfig,
    NonFiniteConfig,
    RootConfig,
    WandbConfig,
)
from polymodal.config.trusted_targets import trust_targets
from polymodal.config.validation import experiment_config, schema_defaults, validate_config

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "InitFromConfig",
    "DistributedConfig",
    "NonFiniteConfig",
    "RootConfig",
    "WandbConfig",
    "apply_overrides",
    "did_you_mean",
    "experiment_config",
    "instantiate",
    "load_config",
    "parse_override",
    "register_resolvers",
    "save_config",
    "schema_defaults",
    "trust_targets",
    "validate_config",
]
