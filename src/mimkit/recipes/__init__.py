"""Jobs as functions: each module is one recipe on the one training loop.

``recipes.run`` starts a run (device, precision, process group, run folder, seed,
resume) and fits a task with the Trainer; the modules below build what differs.
Importing this package registers every recipe (see ``registry``).
"""

from . import benchmark, classify, detect, knn, pretrain, qscore  # noqa: F401  (register)
from .registry import Recipe, get_recipe, recipe_names

__all__ = ["Recipe", "get_recipe", "recipe_names"]
