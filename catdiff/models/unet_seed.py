"""The seed U-Net of "Cat Latent Diffusion", as described in DESIGN.md ("Facts to build on").

The time t enters only at the input: its sinusoidal embedding (Vaswani et al. 2017, width 512)
is tiled over H x W and concatenated to x_t (4 + 512 = 516 channels for SD latents). Then a
conv to 32 channels; a down path of levels (filters 32, 64, 256, 512), each two residual
blocks and a stride-2 conv whose output is pushed on a skip stack; a bottleneck
ResBlock -> spatial self-attention -> ResBlock; an up path with the filters reversed, each
level: concatenate the skip, bilinear up-sample x2, two residual blocks; a conv to the output.

Residual blocks follow the public model: GroupNorm (eps 1e-6) + SiLU pre-activation, two 3x3
convs, and a 3x3 conv that changes the channel count before the block when it differs.
Attention here is the correct softmax(Q K^T / sqrt(d)) V (the public code applies the
attention weights transposed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catdiff.models.embeddings import timestep_embedding
from catdiff.models.unet import SelfAttention2d

_EPS = 1e-6


class SeedResBlock(nn.Module):
    """x' = proj(x);  out = x' + conv2(SiLU(GN(conv1(SiLU(GN(x'))))))  (He et al. 2016, pre-act).

    ``proj`` is a 3x3 conv when the channel count changes, else the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, *, groups: int) -> None:
        super().__init__()
        self.proj = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_channels, eps=_EPS)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class _SeedLevel(nn.Module):
    """Two residual blocks and the resampling of one level (applied before or after them)."""

    def __init__(self, blocks: list[SeedResBlock], resample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


@dataclass
class SeedUNetConfig:
    """Configuration of ``SeedUNet``; the defaults are the seed model on SD-1.5 latents.

    For pixels use in_channels = out_channels = 3. ``base_channels`` is the width of the input
    conv; ``max_period`` is the sinusoid's longest period (10000 as in Vaswani et al.).
    Inputs need H and W divisible by 2 ** len(filters).
    """

    in_channels: int = 4
    out_channels: int = 4
    base_channels: int = 32
    filters: tuple[int, ...] = (32, 64, 256, 512)
    blocks_per_level: int = 2
    embed_dim: int = 512
    norm_groups: int = 32
    max_period: float = 10000.0

    def __post_init__(self) -> None:
        self.filters = tuple(self.filters)


class SeedUNet(nn.Module):
    """The seed denoiser f(x_t, t) -> tensor shaped like x_t (eps prediction in the original)."""

    def __init__(self, config: SeedUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        g = cfg.norm_groups

        def blocks(c_in: int, c_out: int) -> list[SeedResBlock]:
            n = cfg.blocks_per_level
            return [SeedResBlock(c_in if i == 0 else c_out, c_out, groups=g) for i in range(n)]

        # A 1x1 conv as in the public model: each position sees its latent and the embedding.
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.embed_dim, cfg.base_channels, 1)

        self.down = nn.ModuleList()
        ch = cfg.base_channels
        skip_channels = []
        for f in cfg.filters:
            self.down.append(_SeedLevel(blocks(ch, f), nn.Conv2d(f, f, 3, stride=2, padding=1)))
            ch = f
            skip_channels.append(f)

        self.mid = nn.Sequential(
            SeedResBlock(ch, ch, groups=g),
            SelfAttention2d(ch, num_heads=1, groups=g, eps=_EPS),
            SeedResBlock(ch, ch, groups=g),
        )

        self.up = nn.ModuleList()
        for f in reversed(cfg.filters):
            upsample = nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)
            self.up.append(_SeedLevel(blocks(ch + skip_channels.pop(), f), upsample))
            ch = f

        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """x_t: [B, C, H, W] with H, W divisible by 2**len(filters); t: [B] float timesteps."""
        B, _, H, W = x_t.shape
        factor = 2 ** len(self.config.filters)
        if H % factor or W % factor:
            raise ValueError(f"height and width must be divisible by {factor}, got {tuple(x_t.shape)}")
        if t.ndim == 0:
            t = t.expand(B)
        emb = timestep_embedding(t, self.config.embed_dim, max_period=self.config.max_period)
        emb = emb.to(x_t.dtype)[:, :, None, None].expand(B, -1, H, W)
        h = self.conv_in(torch.cat([x_t, emb], dim=1))

        skips = []
        for level in cast("list[_SeedLevel]", self.down):
            for blk in level.blocks:
                h = blk(h)
            h = level.resample(h)
            skips.append(h)
        h = self.mid(h)
        for level in cast("list[_SeedLevel]", self.up):
            h = level.resample(torch.cat([h, skips.pop()], dim=1))
            for blk in level.blocks:
                h = blk(h)
        return self.conv_out(h)
