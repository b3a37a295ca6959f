"""Runs as Python functions: `harmonia.recipes.pretrain` holds the pre-training recipes,
`harmonia.recipes.distill` the distillation recipes."""

from harmonia.recipes.pretrain import RECIPES as PRETRAIN_RECIPES

__all__ = ["PRETRAIN_RECIPES"]
