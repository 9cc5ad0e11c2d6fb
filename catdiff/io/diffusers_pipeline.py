"""diffusers pipeline folders in and out: ``unet/`` + ``scheduler/`` (+ ``vae/`` or ``vqvae/``).

In: a folder saved by a diffusers ``DDPMPipeline``, ``DDIMPipeline``, ``LDMPipeline`` (or any
folder of an unconditional ``UNet2DModel`` and a scheduler, with an autoencoder for latent
models) becomes a catdiff :class:`~catdiff.pipeline.Pipeline`: the U-Net by
:mod:`catdiff.io.diffusers_unet`, the schedule and default sampler by
:mod:`catdiff.io.diffusers_scheduler`, the autoencoder by :func:`catdiff.autoencoders.load_autoencoder`.

Out: :func:`save_diffusers_pipeline` writes a catdiff pipeline in that layout, each part
loadable with its diffusers class, and ``model_index.json`` where a stock pipeline fits (a
pixel-space model is a ``DDPMPipeline``). diffusers has no autoguidance, so a guide is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save as safetensors_bytes

from catdiff.errors import UserError
from catdiff.io.atomic import write_bytes
from catdiff.io.diffusers_scheduler import scheduler_config, settings_from_scheduler
from catdiff.io.diffusers_unet import (
    diffusers_config_from_unet,
    unet_config_from_diffusers,
    unet_state_from_diffusers,
    unet_state_to_diffusers,
)
from catdiff.io.json_files import read_json, write_json
from catdiff.io.state_dicts import load_state_strict, read_state_file

if TYPE_CHECKING:
    from catdiff.pipeline import Pipeline

__all__ = ["is_diffusers_folder", "load_diffusers_pipeline", "save_diffusers_pipeline"]

UNET, SCHEDULER = "unet", "scheduler"
CONFIG, SCHEDULER_CONFIG, MODEL_INDEX = "config.json", "scheduler_config.json", "model_index.json"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
AUTOENCODER_FOLDERS = ("vae", "vqvae")


def is_diffusers_folder(path: Path) -> bool:
    """Whether ``path`` holds a diffusers U-Net and scheduler (a DDPM, DDIM or LDM pipeline)."""
    return (path / UNET / CONFIG).is_file() and (path / SCHEDULER / SCHEDULER_CONFIG).is_file()


def weights_file(folder: Path) -> Path:
    found = next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)
    if found is None:
        raise UserError(f"{folder} holds no {' or '.join(WEIGHTS)}")
    return found


def load_diffusers_pipeline(folder: Path) -> Pipeline:
    """The catdiff pipeline of a diffusers pipeline folder (on the CPU)."""
    from catdiff.autoencoders import load_autoencoder
    from catdiff.diffusion.schedule import NoiseSchedule
    from catdiff.models import build_model
    from catdiff.pipeline import Pipeline

    config = read_json(folder / UNET / CONFIG, what="diffusers UNet config")
    network = build_model(unet_config_from_diffusers(config))
    weights = weights_file(folder / UNET)
    load_state_strict(network, unet_state_from_diffusers(read_state_file(weights)), weights)
    scheduler = read_json(folder / SCHEDULER / SCHEDULER_CONFIG, what="diffusers scheduler config")
    diffusion, sampling = settings_from_scheduler(scheduler)
    size = config.get("sample_size")
    if size is None:
        raise UserError(f"{folder / UNET / CONFIG} has no sample_size, so no image size to sample at")
    height, width = (size, size) if isinstance(size, int) else size
    autoencoder = next(
        (load_autoencoder(folder / name) for name in AUTOENCODER_FOLDERS if (folder / name).is_dir()), None
    )
    return Pipeline(
        network=network.eval(),
        schedule=NoiseSchedule.from_config(diffusion["schedule"]),
        prediction=diffusion["prediction"],
        sample_shape=(network.config.in_channels, height, width),
        clip_x0=diffusion["clip_x0"],
        autoencoder=autoencoder,
        sampling=sampling,
    )


def left_out_of_diffusers(pipeline: Pipeline) -> list[str]:
    """What of ``pipeline`` a diffusers folder cannot carry, each as a short phrase."""
    left = []
    if pipeline.guide is not None:
        left.append(f"the guide network (diffusers has no autoguidance; guidance {pipeline.guidance} is lost)")
    if pipeline.output_size is not None:
        left.append(f"the upsampling to {pipeline.output_size} px")
    return left


def save_diffusers_pipeline(pipeline: Pipeline, folder: Path, diffusion: dict[str, Any]) -> Path:
    """Write ``pipeline`` (whose ``diffusion`` settings are those of its pipeline.json) into
    ``folder`` as diffusers parts: ``unet/`` (UNet2DModel), ``scheduler/`` and, for a latent
    model, ``vae/``; ``model_index.json`` for a pixel model (DDPMPipeline)."""
    from catdiff.io.diffusers_autoencoders import save_diffusers_autoencoder
    from catdiff.models import UNet

    network = getattr(pipeline.network, "_orig_mod", pipeline.network)
    if not isinstance(network, UNet):
        raise UserError(
            f"no diffusers class fits catdiff's {type(network).__name__} (only the unconditional unet exports"
            " to diffusers)"
        )
    network = network.without_augmentation()
    unet = diffusers_config_from_unet(network.config, sample_size=pipeline.sample_shape[-1])
    (folder / UNET).mkdir(parents=True, exist_ok=True)
    write_json(folder / UNET / CONFIG, unet)
    state = {name: tensor.detach().float().contiguous() for name, tensor in network.state_dict().items()}
    write_bytes(folder / UNET / WEIGHTS[0], safetensors_bytes(unet_state_to_diffusers(state)))
    scheduler = scheduler_config(diffusion, pipeline.sampling)
    (folder / SCHEDULER).mkdir(exist_ok=True)
    write_json(folder / SCHEDULER / SCHEDULER_CONFIG, scheduler)
    index = {UNET: ["diffusers", "UNet2DModel"], SCHEDULER: ["diffusers", scheduler["_class_name"]]}
    if pipeline.autoencoder is None:
        write_json(folder / MODEL_INDEX, {"_class_name": "DDPMPipeline", **index})
    elif pipeline.autoencoder.kind == "vq_autoencoder":  # an LDMPipeline's
        save_diffusers_autoencoder(pipeline.autoencoder, folder / "vqvae")
        write_json(folder / MODEL_INDEX, {"_class_name": "LDMPipeline", **index, "vqvae": ["diffusers", "VQModel"]})
    else:
        save_diffusers_autoencoder(pipeline.autoencoder, folder / "vae")
    return folder
