"""The training recipe: one YAML file, a tree of validated dataclasses (see :mod:`.recipe`).

Read by ``gasp train`` (:mod:`gasp_plugin.train`) and by ``gasp probe`` (a recipe as ``--model``)::

    from gasp_plugin.recipe import load_recipe
    recipe = load_recipe("tiny_cpu", ["training.max_steps=10"])
"""

from gasp_plugin.recipe.recipe import (
    DataRecipe,
    GeometryDataRecipe,
    InstructDataRecipe,
    LoraRecipe,
    ModelRecipe,
    Recipe,
    SyntheticInstructRecipe,
    SyntheticScenesRecipe,
    TinyModelRecipe,
    TrainingRecipe,
    load_recipe,
    parse_overrides,
    recipe_to_dict,
    resolve_recipe_path,
    shipped_recipes,
)
from gasp_plugin.recipe.schema import RecipeError, build, set_by_path, to_dict

__all__ = [
    "Recipe",
    "ModelRecipe",
    "TinyModelRecipe",
    "LoraRecipe",
    "DataRecipe",
    "GeometryDataRecipe",
    "SyntheticScenesRecipe",
    "InstructDataRecipe",
    "SyntheticInstructRecipe",
    "TrainingRecipe",
    "RecipeError",
    "load_recipe",
    "parse_overrides",
    "recipe_to_dict",
    "shipped_recipes",
    "resolve_recipe_path",
    "build",
    "set_by_path",
    "to_dict",
]
