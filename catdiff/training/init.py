"""Fine-tuning: a run that starts from a trained model (``catdiff train --init cats``).

The run takes the model's network, schedule and prediction, and starts both its weights and
their EMA from the model's EMA weights; the images must come out in the same latents (same
autoencoder, same latent shape), which :func:`check_latents` makes sure of before anything is
encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from catdiff.errors import UserError
from catdiff.io.checkpoints import read_weights


@dataclass
class InitModel:
    """A trained model to start from: as named (``spec``), its config and its EMA weights."""

    spec: str
    config: dict[str, Any]
    weights: dict[str, Tensor]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.config["sample_shape"])

    @property
    def autoencoder(self) -> dict[str, Any] | None:
        """The record of the autoencoder of the model's latents (None: a pixel-space model)."""
        return self.config.get("autoencoder")

    def options(self) -> dict[str, Any]:
        """The training options the run takes from the model: its network, schedule and target."""
        diffusion = self.config["diffusion"]
        return {
            "model": dict(self.config["model"]),
            "schedule": diffusion["schedule"],
            "prediction": diffusion["prediction"],
        }


def load_init(spec: str) -> InitModel:
    """A bundled model's name, a pipeline folder, a run folder or a checkpoint; anything else
    (or a model that is no denoiser) is a :class:`UserError`."""
    from catdiff.pipeline import pipeline_folder, read_model

    weights_dir, config, _ = read_model(pipeline_folder(spec))
    if "diffusion" not in config or "sample_shape" not in config:
        raise UserError(f"--init {spec}: not a diffusion model (an autoencoder?); give a pipeline or run folder")
    return InitModel(spec, config, read_weights(weights_dir, ema=True))


def check_latents(init: InitModel, autoencoder: dict[str, Any] | None, size: int, factor: int) -> None:
    """Refuse a model whose samples are not this run's: another autoencoder (``autoencoder``:
    the record of this run's, None in pixels) or another shape at ``size`` px."""
    theirs, ours = init.autoencoder, autoencoder
    if (theirs is None) != (ours is None):
        space = "pixel space" if theirs is None else "latents"
        raise UserError(f"--init {init.spec} was trained in {space}; this run trains in the other")
    if theirs is not None and ours is not None and theirs["weights"] != ours["weights"]:
        raise UserError(f"--init {init.spec} was trained in the latents of another autoencoder ({theirs['type']})")
    side = size // factor
    if tuple(init.sample_shape[-2:]) != (side, side):
        pixels = init.sample_shape[-1] * factor
        raise UserError(
            f"--init {init.spec} makes {'x'.join(map(str, init.sample_shape))} samples ({pixels} px);"
            f" this run's at {size} px would be {side}x{side}: drop --size or give --size {pixels}"
        )


def init_size(init: InitModel, factor: int) -> int:
    """The training size in pixels of the model's samples."""
    return int(init.sample_shape[-1]) * factor


def model_path(spec: str) -> str:
    """How ``report.json`` names the model a run started from: a bundled name as it is, a folder by its full path."""
    from catdiff.pipeline import BUNDLED_PIPELINES

    return spec if spec in BUNDLED_PIPELINES else str(Path(spec).resolve())
