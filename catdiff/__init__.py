"""catdiff: a latent-diffusion toolkit in PyTorch.

The public API, loaded on first use (so that ``import catdiff`` and the command line start
fast)::

    import catdiff

    pipeline = catdiff.Pipeline.from_folder("cats")      # the bundled model, a pipeline or run folder
    images = pipeline.sample(4, seed=0)                   # float NCHW in [-1, 1]; image i has seed 0 + i
    catdiff.save_grid(images, "cats.png")

Sampling: :class:`Pipeline` (conditions from its ``class_condition`` / ``autoguidance``),
:class:`NoiseSchedule`, :data:`SAMPLERS` / :func:`get_sampler`, :class:`Denoiser`;
:class:`StableDiffusion` for SD-1.x checkpoints. Training: :func:`open_training_data`,
:class:`TrainConfig`, :func:`load_recipe`, :class:`Trainer`. Autoencoders:
:func:`load_autoencoder`. Best-of-N: :func:`load_scorer`, ``Pipeline.best_of``. Images: :func:`make_grid`,
:func:`save_grid`, :func:`to_pil`. Errors a user can cause:
:class:`UserError`.
"""

import importlib
import os
from typing import Any

# OpenMP threads that spin while waiting make PyTorch up to 60x slower whenever another
# process shares the cores (seen on 2-core machines); sleeping waiters cost ~nothing alone.
# This must happen before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "Pipeline": "catdiff.pipeline",
    "NoiseSchedule": "catdiff.diffusion.schedule",
    "Denoiser": "catdiff.diffusion.denoiser",
    "SAMPLERS": "catdiff.diffusion.samplers",
    "get_sampler": "catdiff.diffusion.samplers",
    "StableDiffusion": "catdiff.sd.pipeline",
    "open_training_data": "catdiff.data.sources",
    "TrainConfig": "catdiff.training.config",
    "load_recipe": "catdiff.recipes",
    "Trainer": "catdiff.training.trainer",
    "load_autoencoder": "catdiff.autoencoders",
    "save_grid": "catdiff.images",
    "make_grid": "catdiff.images",
    "load_scorer": "catdiff.rerank",
    "pipeline_folder": "catdiff.pipeline",
    "to_pil": "catdiff.images",
    "UserError": "catdiff.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'catdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
