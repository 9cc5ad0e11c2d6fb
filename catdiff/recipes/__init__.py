"""Training recipes shipped with catdiff: ``catdiff/recipes/NAME.json``, one JSON object of
``TrainConfig`` options, and two keys of the command: ``size``, the training resolution in pixels,
and ``pixels: true`` for a recipe that trains an image folder in pixel space, not in latents.

``catdiff train FOLDER --recipe NAME`` reads one by name, ``--config FILE`` any file of the same
keys. An image folder trains by default with the recipe of its time budget
(:func:`budget_recipe`: the width, batch and learning rate that gave the best Fréchet distance
in that time on 2 CPU cores, docs/TRAINING.md), :data:`DEFAULT_BUDGET` when none is given;
:data:`BUNDLED_CATS` made the bundled cats model (docs/MODEL_CARD.md); :data:`DEFAULT_PIXELS` is
the pixel-space default (``--pixels``); :data:`DEFAULT_CLASSES` the default of a folder of class
subfolders. A recipe may say ``"auto"`` for ``mixed_precision`` and ``channels_last``: measured
at the start of the run (:mod:`catdiff.training.speed`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from catdiff.errors import UserError
from catdiff.io.json_files import read_json

__all__ = [
    "BUDGET_RECIPES",
    "BUNDLED_CATS",
    "DEFAULT_BUDGET",
    "DEFAULT_CLASSES",
    "DEFAULT_PIXELS",
    "RECIPES",
    "RECIPES_DIR",
    "budget_recipe",
    "load_recipe",
    "recipe_path",
]

RECIPES_DIR = Path(__file__).parent
#: The names of the shipped recipes, sorted.
RECIPES: tuple[str, ...] = tuple(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
BUNDLED_CATS = "cats-128-taesd"  # the recipe of the bundled cats model
DEFAULT_BUDGET = 30 * 60.0  # seconds of training of an image folder given neither --time nor --max-steps
#: An image folder's default recipe by time budget: (budgets up to this many seconds, recipe).
BUDGET_RECIPES: tuple[tuple[float, str], ...] = (
    (20 * 60.0, "folder-10m"),
    (75 * 60.0, "folder-30m"),
    (math.inf, "folder-2h"),
)
DEFAULT_PIXELS = "pixel-cats-32"
DEFAULT_CLASSES = "classes-128-taesd"


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name``; an unknown name is a one-line :class:`UserError`
    listing the known ones."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES_DIR / f"{name}.json"


def load_recipe(name: str | Path) -> dict[str, Any]:
    """The options of the shipped recipe ``name``, or of a recipe file (a fresh dict each call),
    checked strictly as a :class:`~catdiff.training.config.Recipe`."""
    from catdiff.training.config import Recipe
    from catdiff.validation import validate

    file = name if isinstance(name, Path) else recipe_path(name)
    options = read_json(file, what="recipe")
    validate(Recipe, options, f"recipe {file}")
    return options


def budget_recipe(seconds: float | None) -> str:
    """The default recipe of an image folder trained for ``seconds`` (None: a step limit and no
    budget, taken as a long run)."""
    return next(
        name for longest, name in BUDGET_RECIPES if seconds is not None and seconds <= longest or math.isinf(longest)
    )
