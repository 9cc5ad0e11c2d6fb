"""TAESD, the tiny autoencoder for the Stable Diffusion 1.x latent space.

TAESD (Ollin Boer Bohan, https://github.com/madebyollin/taesd, MIT) is distilled from the
SD-1.x VAE (``AutoencoderKL``): the same latent space (4 channels, 8x down-sampling) at
about 1.2M parameters per half instead of ~34M/~49M, with no sampling step, no attention
and no normalisation. Its latents are already scaled like SD latents (the VAE's latents
x 0.18215), so they are what a denoiser trains on; do not scale them again.

The modules here are indexed exactly like TAESD's ``nn.Sequential`` state dicts
(``encoder.0.weight``, ``encoder.1.conv.0.weight``, ...), so the published files load
without key remapping; :func:`catdiff.io.taesd.load_taesd` reads them (a copy ships in
``catdiff/weights/taesd/``). diffusers' ``AutoencoderTiny`` is the same network under other key names.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TAESD", "TAESDDecoder", "TAESDEncoder"]

_WIDTH = 64  # every hidden conv of TAESD has 64 channels


def _conv(in_channels: int, out_channels: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=bias)


class _Block(nn.Module):
    """relu(x + conv(relu(conv(relu(conv(x))))))  -- TAESD's residual block (identity skip)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
        )
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.conv(x) + x)


def _blocks(n: int) -> list[nn.Module]:
    return [_Block(_WIDTH) for _ in range(n)]


def _down() -> nn.Module:
    return _conv(_WIDTH, _WIDTH, stride=2, bias=False)


def _up() -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="nearest"), _conv(_WIDTH, _WIDTH, bias=False)]


class _SoftClamp(nn.Module):
    """tanh(z / 3) * 3: squashes latents smoothly into (-3, 3) before decoding."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(z / 3) * 3


class TAESDEncoder(nn.Sequential):
    """Pixels ``[N, 3, H, W]`` in [0, 1] -> SD-scaled latents ``[N, 4, H/8, W/8]``.

    By index: 0 conv 3->64; 1 block; then three times a stride-2 conv (no bias) and three
    blocks (2-5, 6-9, 10-13); 14 conv 64->4.
    """

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__(
            _conv(3, _WIDTH),
            *_blocks(1),
            _down(),
            *_blocks(3),
            _down(),
            *_blocks(3),
            _down(),
            *_blocks(3),
            _conv(_WIDTH, latent_channels),
        )


class TAESDDecoder(nn.Sequential):
    """SD-scaled latents ``[N, 4, h, w]`` -> pixels ``[N, 3, 8h, 8w]``, about [0, 1] (not clamped).

    By index: 0 soft clamp; 1 conv 4->64; 2 ReLU; 3-5 blocks; then three times a nearest
    up-sample x2, a conv (no bias) and blocks (6-10, 11-15, 16-18, the last with one block);
    19 conv 64->3.
    """

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__(
            _SoftClamp(),
            _conv(latent_channels, _WIDTH),
            nn.ReLU(),
            *_blocks(3),
            *_up(),
            *_blocks(3),
            *_up(),
            *_blocks(3),
            *_up(),
            *_blocks(1),
            _conv(_WIDTH, 3),
        )


class TAESD(nn.Module):
    """TAESD encoder and decoder in catdiff's conventions.

    ``encode_latents`` takes images in [-1, 1] and gives latents ready for diffusion (already
    scaled like SD latents); ``decode_latents`` takes such latents and gives images in about [-1, 1]
    (not clamped: clamp when converting to pixels, as ``catdiff.images.to_uint8`` does).
    Image sides should be multiples of 8.
    """

    #: The ``type`` that autoencoder descriptors record.
    kind = "taesd"
    latent_channels = 4
    downsampling_factor = 8
    #: The SD-1.x factor the latents already include (for reference; never apply it again).
    sd_scaling_factor = 0.18215

    def __init__(self) -> None:
        super().__init__()
        self.encoder = TAESDEncoder(self.latent_channels)
        self.decoder = TAESDDecoder(self.latent_channels)

    def encode_latents(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` in [-1, 1] -> latents ``[N, 4, H/8, W/8]``."""
        return self.encoder((images + 1) / 2)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents ``[N, 4, h, w]`` -> images ``[N, 3, 8h, 8w]`` in about [-1, 1]."""
        return self.decoder(latents) * 2 - 1
