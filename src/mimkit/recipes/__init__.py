"""Jobs as functions: each module is one recipe on the one training loop.

``recipes.run`` starts a run (device, precision, process group, run folder, seed,
resume) and fits a task with the Trainer; the modules below build what differs. Every
module of this package is imported here, so a new job is one module that registers
itself (see ``registry``): its CLI command and Python function follow from it.
"""

import importlib
import pkgutil

from .registry import Flag, Recipe, get_recipe, load_config, recipe_names, recipes, schema

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Flag", "Recipe", "get_recipe", "load_config", "recipe_names", "recipes", "schema"]
