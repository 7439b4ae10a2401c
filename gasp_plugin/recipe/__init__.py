"""The training recipe: one YAML file, a tree of validated dataclasses (see :mod:`.recipe`).

Read by ``gasp train`` (:mod:`gasp_plugin.train`) and by ``gasp probe`` (a recipe as ``--model``)::

    from gasp_plugin.recipe import load_recipe
    recipe = load_recipe("tiny_cpu", ["training.max_steps=10"])

The section dataclasses (``ModelRecipe``, ``DataRecipe``, ...) are in :mod:`gasp_plugin.recipe.recipe`,
the mapping-to-dataclass machinery in :mod:`gasp_plugin.recipe.schema`.
"""

from gasp_plugin.recipe.recipe import (
    Recipe,
    load_recipe,
    parse_overrides,
    recipe_to_dict,
    resolve_recipe_path,
    shipped_recipes,
)
from gasp_plugin.recipe.schema import RecipeError

__all__ = ["Recipe", "RecipeError", "load_recipe", "parse_overrides", "recipe_to_dict", "resolve_recipe_path",
           "shipped_recipes"]
