"""Training recipes shipped with catdiff: ``catdiff/recipes/NAME.json``, one JSON object of
``TrainConfig`` options, and two keys of the command: ``size``, the training resolution in pixels,
and ``pixels: true`` for a recipe that trains an image folder in pixel space, not in latents.

``catdiff train FOLDER --recipe NAME`` reads one by name, ``--config FILE`` any file of the same
keys. :data:`DEFAULT_LATENT` made the bundled cats model (docs/MODEL_CARD.md) and is what an image
folder trains with by default; :data:`DEFAULT_PIXELS` is the pixel-space default (``--pixels``);
:data:`DEFAULT_CLASSES` the default of a folder of class subfolders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catdiff.errors import UserError
from catdiff.io.json_files import read_json

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_LATENT",
    "DEFAULT_PIXELS",
    "RECIPES",
    "RECIPES_DIR",
    "load_recipe",
    "recipe_path",
]

RECIPES_DIR = Path(__file__).parent
#: The names of the shipped recipes, sorted.
RECIPES: tuple[str, ...] = tuple(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
DEFAULT_LATENT = "cats-128-taesd"  # the recipe of the bundled cats model
DEFAULT_PIXELS = "pixel-cats-32"
DEFAULT_CLASSES = "classes-128-taesd"


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name``; an unknown name is a one-line :class:`UserError`
    listing the known ones."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES_DIR / f"{name}.json"


def load_recipe(name: str) -> dict[str, Any]:
    """The options of the shipped recipe ``name`` (a fresh dict each call)."""
    return read_json(recipe_path(name), what="recipe")
