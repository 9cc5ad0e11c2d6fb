"""Autoencoders in diffusion terms: images in [-1, 1] <-> diffusion-ready latents.

One interface over the bundled TAESD, AutoencoderKL (SD-1.x VAE files, diffusers folders, or
ones we train) and the VQ autoencoder of LDMs (diffusers ``VQModel`` folders); diffusers'
``AutoencoderTiny`` folders load as TAESD. Each module has ``encode_latents``/``decode_latents``, ``latent_channels``,
``downsampling_factor`` and a ``kind``, with a fingerprint of the weights so that a latent cache
or a model can say exactly which autoencoder its latents belong to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from catdiff.errors import UserError
from catdiff.io.diffusers_autoencoders import diffusers_class, load_diffusers_autoencoder, write_diffusers_folder
from catdiff.io.taesd import is_taesd_folder, load_taesd, save_taesd
from catdiff.io.vae import load_vae, save_vae
from catdiff.models import AutoencoderKL
from catdiff.models.taesd import TAESD
from catdiff.models.vq import VQAutoencoder

#: How each kind of autoencoder writes a folder that :func:`load_autoencoder` reads back.
SAVERS: dict[str, Callable[[Any, Path], Path]] = {
    TAESD.kind: save_taesd,
    AutoencoderKL.kind: save_vae,
    VQAutoencoder.kind: write_diffusers_folder,
}


def fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights (as float32), independent of file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Autoencoder:
    """A TAESD, AutoencoderKL or VQ autoencoder with ``encode``/``decode`` in diffusion-ready
    float32 latents, whatever the module's own dtype."""

    module: TAESD | AutoencoderKL | VQAutoencoder

    def __post_init__(self) -> None:
        # Convolutions on CPU and GPU run 1.5x faster in NHWC, with the same results to float rounding.
        self.module.to(memory_format=torch.channels_last)

    @property
    def kind(self) -> str:
        return self.module.kind

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        return self.module.latent_channels

    @property
    def downsampling_factor(self) -> int:
        return self.module.downsampling_factor

    def descriptor(self) -> dict[str, Any]:
        """What a latent cache or model records about the autoencoder its latents came from."""
        return {"type": self.kind, "weights": fingerprint(self.module)}

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> float32 latents."""
        images = images.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.module.encode_latents(images).float().contiguous()

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (any float dtype) -> float32 images in about [-1, 1]."""
        latents = latents.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.module.decode_latents(latents).float().contiguous()

    def to(self, device: torch.device | str) -> Autoencoder:
        self.module.to(device)
        return self

    def save(self, folder: Path) -> Path:
        """Write a self-contained copy that :func:`load_autoencoder` reads back."""
        return SAVERS[self.kind](self.module, folder)


def load_autoencoder(spec: str | Path) -> Autoencoder:
    """``"taesd"`` (the bundled copy), a TAESD folder, a diffusers ``AutoencoderKL``,
    ``AutoencoderTiny`` or ``VQModel`` folder (a pipeline's ``vae/`` or ``vqvae/``), a catdiff
    autoencoder folder, or any SD-1.x VAE that :func:`catdiff.io.vae.load_vae` reads."""
    if str(spec) == "taesd":
        return Autoencoder(load_taesd())
    path = Path(spec)
    if not path.exists():
        raise UserError(f"autoencoder not found: {path} (give 'taesd', a VAE file or a folder)")
    if is_taesd_folder(path):
        return Autoencoder(load_taesd(path))
    if diffusers_class(path) is not None:
        return Autoencoder(load_diffusers_autoencoder(path))
    return Autoencoder(load_vae(path))
