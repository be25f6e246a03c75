"""Recipes: one module per kind of training (docs/architecture.md, "Recipes").

`Recipe` is the interface (traindepot/recipes/base.py); the registry
(traindepot/recipes/registry.py) knows the built-in recipes and those installed under the
`traindepot.recipes` entry-point group.
"""

from traindepot.recipes.base import Example, Recipe, TrainerParts
from traindepot.recipes.registry import (
    ENTRY_POINT_GROUP,
    all_recipes,
    get,
    recipe_for,
    set_aside_other_tasks_fields,
    union_json_schema,
    validate_spec,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Example",
    "Recipe",
    "TrainerParts",
    "all_recipes",
    "get",
    "recipe_for",
    "set_aside_other_tasks_fields",
    "union_json_schema",
    "validate_spec",
]
