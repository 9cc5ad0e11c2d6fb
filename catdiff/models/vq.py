"""The vector-quantised autoencoder of latent diffusion ("VQ-f4" and kin).

van den Oord et al. 2017, "Neural Discrete Representation Learning" (the codebook and its
nearest-neighbour lookup); Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models" (the VQ-regularised first stage of LDMs such as ``CompVis/ldm-celebahq-256``:
the encoder and decoder of :mod:`catdiff.models.vae`, the quantiser in front of the decoder).

The parameter names mirror diffusers' ``VQModel`` (``encoder.*``, ``quant_conv``,
``quantize.embedding``, ``post_quant_conv``, ``decoder.*``), so its folders load with no remapping.

Conventions: ``encode`` gives the unquantised latents (``quant_conv`` of the encoder's output) and
``decode`` quantises what it is given before decoding, as an LDM does with the latents it samples;
``encode_latents`` / ``decode_latents`` work on diffusion-ready latents (x ``scaling_factor``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from catdiff.models.vae import Decoder, Encoder, EncoderDecoderConfig, LatentAutoencoder

__all__ = ["VQAutoencoder", "VQAutoencoderConfig", "VectorQuantizer"]


@dataclass
class VQAutoencoderConfig(EncoderDecoderConfig):
    """Shape of a :class:`VQAutoencoder`: an :class:`EncoderDecoderConfig` (defaults: the VQ-f4 of
    ``CompVis/ldm-celebahq-256``) and a codebook of ``num_vq_embeddings`` vectors of
    ``vq_embed_dim`` channels (``latent_channels`` when not given), the channels of the latents a
    denoiser sees. ``scaling_factor`` keeps diffusers' ``VQModel`` default, which that folder does
    not override.
    """

    latent_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    num_vq_embeddings: int = 8192
    vq_embed_dim: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vq_embed_dim is None:
            self.vq_embed_dim = self.latent_channels
        if self.num_vq_embeddings < 1 or self.vq_embed_dim < 1:
            raise ValueError(
                f"num_vq_embeddings and vq_embed_dim must be >= 1, got {self.num_vq_embeddings} and {self.vq_embed_dim}"
            )


class VectorQuantizer(nn.Module):
    """Each position's vector -> the codebook vector nearest to it in Euclidean distance
    (van den Oord et al. 2017, eq. 1-2); ``embedding.weight`` is the codebook ``[K, D]``."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, dim)

    def indices(self, z: Tensor) -> Tensor:
        """``[N, D, h, w]`` -> the index of each position's nearest codebook vector, ``[N, h, w]``;
        distances in float32 whatever the dtype, so that half precision does not pick other codes."""
        n, d, h, w = z.shape
        vectors = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        return torch.cdist(vectors, self.embedding.weight.float()).argmin(dim=1).view(n, h, w)

    def forward(self, z: Tensor) -> Tensor:
        """``[N, D, h, w]`` -> the same shape, every position replaced by its codebook vector."""
        return self.embedding(self.indices(z)).permute(0, 3, 1, 2)


class VQAutoencoder(LatentAutoencoder):
    config: VQAutoencoderConfig

    """Images <-> latents through a codebook (the LDM first stage with vector quantisation).

    ``encode(images)`` -> unquantised latents ``[N, vq_embed_dim, H/f, W/f]``;
    ``decode(latents)`` quantises them, then decodes. Image sides should be multiples of
    ``downsampling_factor``.
    """

    #: The ``type`` that autoencoder descriptors record.
    kind = "vq_autoencoder"

    def __init__(self, config: VQAutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VQAutoencoderConfig()
        dim = self.latent_channels
        self.encoder = Encoder(config, config.latent_channels)
        self.quant_conv = nn.Conv2d(config.latent_channels, dim, 1)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, dim)
        self.post_quant_conv = nn.Conv2d(dim, config.latent_channels, 1)
        self.decoder = Decoder(config)

    @property
    def latent_channels(self) -> int:
        return self.config.vq_embed_dim or self.config.latent_channels

    def encode(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` in [-1, 1] -> unquantised, unscaled latents."""
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: Tensor) -> Tensor:
        """Unscaled latents -> their codebook vectors -> images in about [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(self.quantize(latents)))

    def encode_latents(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> diffusion-ready latents (unquantised, times ``scaling_factor``);
        ``decode_latents`` divides by it and calls :meth:`decode`."""
        return self.encode(images) * self.config.scaling_factor
