"""Typed training recipes (YAML -> dataclasses) with strict keys and one validation place."""
from megatron_huatuo.config.recipe import Recipe, RecipeError, load_recipe, validate

__all__ = ["Recipe", "RecipeError", "load_recipe", "validate"]
