"""Typed configs (dataclasses) and their YAML loader."""

from configs.loader import (
    ConfigError,
    apply_overrides,
    atomic_write_bytes,
    atomic_write_text,
    from_dict,
    load_config,
    save_yaml,
    to_dict,
)
from configs.schema import (
    CandidateConfig,
    CatalogConfig,
    Config,
    EncoderConfig,
    EnvConfig,
    EvalConfig,
    LoggingConfig,
    PolicyConfig,
    PPOConfig,
    RewardConfig,
    TrainConfig,
    UserConfig,
)

__all__ = [
    "CandidateConfig",
    "CatalogConfig",
    "Config",
    "ConfigError",
    "EncoderConfig",
    "EnvConfig",
    "EvalConfig",
    "LoggingConfig",
    "PPOConfig",
    "PolicyConfig",
    "RewardConfig",
    "TrainConfig",
    "UserConfig",
    "apply_overrides",
    "atomic_write_bytes",
    "atomic_write_text",
    "from_dict",
    "load_config",
    "save_yaml",
    "to_dict",
]
