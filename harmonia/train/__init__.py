"""BEATs pre-training: config, objective, tokenizers, distributed loop with exact resume."""

from harmonia.train.config import ConfigError, PretrainConfig, apply_overrides

__all__ = ["ConfigError", "PretrainConfig", "apply_overrides"]
