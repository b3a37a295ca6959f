"""Pre-training: the shared Trainer (`trainer`: DDP/FSDP2, accumulation, bf16, exact resume) and its
tasks, BEATs (`pretrain`: config, objective, tokenizers) and the Dasheng MAE (`mae`)."""

from harmonia.train.config import ConfigError, PretrainConfig, apply_overrides

__all__ = ["ConfigError", "PretrainConfig", "apply_overrides"]
