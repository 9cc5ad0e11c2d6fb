"""AutoencoderKL, the Stable Diffusion 1.x VAE, also trainable at small sizes.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (the
KL-regularised autoencoder "KL-f8" of SD: a convolutional ResNet encoder/decoder with one
self-attention block at the lowest resolution); Kingma & Welling 2014, "Auto-Encoding
Variational Bayes" (the diagonal Gaussian posterior, the reparameterised sample and the KL to
N(0, I)).

The parameter names mirror diffusers' ``AutoencoderKL`` (``encoder.down_blocks.0.resnets.0.norm1``,
``encoder.mid_block.attentions.0.to_q``, ``quant_conv``, ...), so a diffusers ``vae/`` folder loads
with no remapping; ``catdiff.io.vae`` maps the CompVis names of SD single files.

Conventions: images are float NCHW in [-1, 1]; ``encode`` gives the posterior over *unscaled*
latents and ``decode`` takes unscaled latents, as in the papers and in diffusers.
``encode_latents`` / ``decode_latents`` work on diffusion-ready latents (x ``scaling_factor``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "Decoder",
    "DiagonalGaussian",
    "Encoder",
    "EncoderDecoderConfig",
    "LatentAutoencoder",
]


@dataclass
class EncoderDecoderConfig:
    """Shape of the :class:`Encoder` / :class:`Decoder` pair, shared by :class:`AutoencoderKL` and the
    VQ autoencoder of :mod:`catdiff.models.vq`; the defaults are SD-1.x's VAE.

    ``block_out_channels[i]`` is the width of resolution level ``i``; every level but the last
    halves the resolution, so the down-sampling factor is ``2 ** (len(block_out_channels) - 1)``.
    The decoder has ``layers_per_block + 1`` residual blocks per level. Every width must be a
    multiple of ``norm_groups``. ``latent_channels`` is the decoder's input width.
    ``scaling_factor`` maps the latents to about unit variance for diffusion (0.18215 for SD-1.x).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dropout: float = 0.0
    scaling_factor: float = 0.18215

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)  # JSON gives lists
        if not self.block_out_channels:
            raise ValueError("block_out_channels must name at least one level")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        bad = [c for c in self.block_out_channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not multiples of norm_groups ({self.norm_groups})")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class AutoencoderKLConfig(EncoderDecoderConfig):
    """Shape of an :class:`AutoencoderKL` (the fields of :class:`EncoderDecoderConfig`); the defaults
    are SD-1.x's VAE (about 84M parameters)."""


class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, diag(exp(logvar))) of a VAE (Kingma & Welling 2014).

    Built from the encoder's ``[N, 2C, h, w]`` moments: the first C channels are the mean, the
    last C the log-variance, clamped to [-30, 20] as in SD so ``exp`` stays finite.
    """

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps, eps ~ N(0, I) drawn from ``generator`` (the reparameterisation)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, summed over channels and positions: shape ``[N]``."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


# --- building blocks (named like diffusers' modules) -----------------------------------------


class ResnetBlock(nn.Module):
    """x -> skip(x) + conv2(dropout(SiLU(GN(conv1(SiLU(GN(x))))))); skip is a 1x1 conv when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nn.Module):
    """Single-head residual self-attention over the h*w positions (the VAE's mid block).

    x + W_o softmax(Q K^T / sqrt(C)) V with Q, K, V = GroupNorm(x) W_{q,k,v} (Vaswani et al. 2017),
    computed with ``F.scaled_dot_product_attention``. ``to_out`` is a list so the projection is
    named ``to_out.0`` as in diffusers.
    """

    def __init__(self, channels: int, *, groups: int, eps: float) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # [B, 1, N, C]
        attn = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out[0](attn).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero padding of one pixel on the right and bottom only (as in SD)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 up-sampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, downsample: bool, **norm) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, **norm) for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if downsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, upsample: bool, **norm) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, **norm) for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for layer in (*self.resnets, *self.upsamplers):
            x = layer(x)
        return x


class MidBlock(nn.Module):
    """ResNet block -> self-attention -> ResNet block at the lowest resolution."""

    def __init__(self, channels: int, *, groups: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(channels, channels, groups=groups, eps=eps, dropout=dropout) for _ in range(2)]
        )
        self.attentions = nn.ModuleList([Attention(channels, groups=groups, eps=eps)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """Images ``[N, in, H, W]`` -> ``[N, out_channels, H / f, W / f]`` (AutoencoderKL's posterior
    moments, ``2 * latent_channels``; the VQ autoencoder's latents, ``latent_channels``)."""

    def __init__(self, config: EncoderDecoderConfig, out_channels: int) -> None:
        super().__init__()
        c = config
        norm: dict[str, Any] = dict(groups=c.norm_groups, eps=c.norm_eps, dropout=c.dropout)
        widths = c.block_out_channels
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(widths[max(i - 1, 0)], width, c.layers_per_block, downsample=i < len(widths) - 1, **norm)
            for i, width in enumerate(widths)
        )
        self.mid_block = MidBlock(widths[-1], **norm)
        self.conv_norm_out = nn.GroupNorm(c.norm_groups, widths[-1], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents ``[N, latent, h, w]`` -> images ``[N, out, h * f, w * f]``.

    ``up_blocks[0]`` works at the lowest resolution (the widths reversed); each has
    ``layers_per_block + 1`` ResNet blocks and, except the last, an up-sampler.
    """

    def __init__(self, config: EncoderDecoderConfig) -> None:
        super().__init__()
        c = config
        norm: dict[str, Any] = dict(groups=c.norm_groups, eps=c.norm_eps, dropout=c.dropout)
        widths = tuple(reversed(c.block_out_channels))
        self.conv_in = nn.Conv2d(c.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], **norm)
        self.up_blocks = nn.ModuleList(
            UpBlock(widths[max(i - 1, 0)], width, c.layers_per_block + 1, upsample=i < len(widths) - 1, **norm)
            for i, width in enumerate(widths)
        )
        self.conv_norm_out = nn.GroupNorm(c.norm_groups, widths[-1], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], c.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class LatentAutoencoder(nn.Module):
    """What :class:`AutoencoderKL` and :class:`catdiff.models.vq.VQAutoencoder` share: a ``config``
    (:class:`EncoderDecoderConfig`) and ``decode`` of unscaled latents, hence ``decode_latents``."""

    config: EncoderDecoderConfig
    decode: Callable[[Tensor], Tensor]  # unscaled latents -> images, the subclass's own

    @property
    def downsampling_factor(self) -> int:
        return self.config.downsampling_factor

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Diffusion-ready latents -> images in about [-1, 1] (divides by ``scaling_factor`` first)."""
        return self.decode(latents / self.config.scaling_factor)


class AutoencoderKL(LatentAutoencoder):
    """The KL-regularised autoencoder of latent diffusion (SD-1.x's VAE with the default config).

    ``encode(images) -> DiagonalGaussian`` over unscaled latents; ``decode(latents) -> images``.
    ``encode_latents`` / ``decode_latents`` take and give diffusion-ready latents
    (unscaled x ``scaling_factor``). ``forward`` is the training pass: reconstruction and posterior.
    Image sides should be multiples of ``downsampling_factor``.
    """

    #: The ``type`` of its model config and of the autoencoder descriptors that latents record.
    kind = "autoencoder_kl"

    def __init__(self, config: AutoencoderKLConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AutoencoderKLConfig()
        self.encoder = Encoder(config, 2 * config.latent_channels)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def encode(self, images: Tensor) -> DiagonalGaussian:
        """Images ``[N, 3, H, W]`` in [-1, 1] -> posterior over latents ``[N, 4, H/f, W/f]`` (unscaled)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(images)))

    def decode(self, latents: Tensor) -> Tensor:
        """Unscaled latents ``[N, 4, h, w]`` -> images ``[N, 3, h*f, w*f]`` in about [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(latents))

    def encode_latents(
        self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Images in [-1, 1] -> diffusion-ready latents: the posterior mean (or, with
        ``sample=True``, a draw from ``generator``) times ``scaling_factor``."""
        posterior = self.encode(images)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.config.scaling_factor

    def forward(
        self, images: Tensor, *, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """The training pass: (reconstruction, posterior); the KL term is ``posterior.kl()``."""
        posterior = self.encode(images)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
