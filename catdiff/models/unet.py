"""The general denoising U-Net (DDPM / ADM style), the default denoiser for quality.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (the U-Net with time in every
residual block and self-attention at 16x16); Dhariwal & Nichol 2021, "Diffusion Models Beat
GANs on Image Synthesis" (ADM: scale-shift time conditioning "AdaGN", multi-head attention,
zero-initialised residual branches and output, conv resampling).

Cross-attention (text conditioning) is meant to enter in ``ResAttnBlock``: a second attention
over a ``context`` sequence after the self-attention, with ``context`` threaded through
``UNet.forward``. It is left out until a conditioned model needs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catdiff.models.embeddings import timestep_embedding


class SelfAttention2d(nn.Module):
    """Residual multi-head self-attention over the H*W positions of a feature map.

    x + W_o softmax(Q K^T / sqrt(d)) V with Q, K, V = GroupNorm(x) W_{q,k,v} per head
    (Vaswani et al. 2017), computed with ``F.scaled_dot_product_attention``.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        groups: int = 32,
        eps: float = 1e-5,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.to_out = nn.Linear(channels, channels)
        if zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        # [B, C, H, W] -> tokens [B, N = H*W, C]; free for channels_last inputs.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)
        q, k, v = self.to_qkv(tokens).chunk(3, dim=-1)
        q, k, v = (z.reshape(B, H * W, self.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d]
        attn = attn.transpose(1, 2).reshape(B, H * W, C)
        out = self.to_out(attn).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return x + out


class ResBlock(nn.Module):
    """Residual block with the time embedding as scale and shift (AdaGN, Dhariwal & Nichol 2021).

    h = conv1(SiLU(GN(x)));  h = GN(h) * (1 + s) + b with [s, b] = Linear(SiLU(emb));
    out = skip(x) + conv2(dropout(SiLU(h))), conv2 zero-initialised so the block starts as skip.
    With ``scale_shift=False`` the embedding is added instead, h = GN(h + Linear(SiLU(emb)))
    (DDPM, Ho et al. 2020).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        groups: int,
        dropout: float,
        scale_shift: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, (2 if scale_shift else 1) * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        for parameter in self.conv2.parameters():
            nn.init.zeros_(parameter)
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        projected = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = projected.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + projected)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ResAttnBlock(nn.Module):
    """A ``ResBlock`` followed, at attention levels, by ``SelfAttention2d``."""

    def __init__(self, res: ResBlock, attn: SelfAttention2d | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv, or 2x2 average pooling. ``padding=0`` pads the
    conv's input by one row and column at the bottom and right only (DDPM's released models)."""

    def __init__(self, channels: int, *, with_conv: bool, padding: int = 1) -> None:
        super().__init__()
        self.pad = (0, 1, 0, 1) if with_conv and padding == 0 else None
        self.op: nn.Module = nn.AvgPool2d(2)
        if with_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x if self.pad is None else F.pad(x, self.pad))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour up-sampling, then (optionally) a 3x3 conv."""

    def __init__(self, channels: int, *, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the U-Net: its blocks and the resampling that leaves it (or None)."""

    def __init__(self, blocks: list[ResAttnBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


@dataclass
class UNetConfig:
    """Configuration of ``UNet``.

    ``attention_levels`` are indices into ``channel_mult``: level i works on feature maps of
    size input_size / 2**i, so (1,) puts attention at 16x16 for 32x32 inputs (DDPM's CIFAR-10
    setting). The bottleneck always has one attention block. Attention heads have
    ``attention_head_dim`` channels each (one head where a level has fewer channels).
    ``augment_dim`` > 0 adds the condition of non-leaking augmentation
    (:mod:`catdiff.training.augment`), absent (zero) at sampling.
    """

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    attention_head_dim: int = 64
    dropout: float = 0.0
    groups: int = 32
    conv_resample: bool = True
    augment_dim: int = 0
    # The variants of DDPM's released models (Ho et al. 2020; diffusers' UNet2DModel options):
    # the time embedding added, not as scale and shift; sin-first sinusoids with a frequency
    # shift; GroupNorm's eps; a stride-2 conv padded at the bottom and right only (padding 0).
    scale_shift: bool = True
    cos_first: bool = True
    freq_shift: float = 0.0
    norm_eps: float = 1e-5
    downsample_padding: Literal[0, 1] = 1

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(self.attention_levels)
        bad = [i for i in self.attention_levels if not 0 <= i < len(self.channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {len(self.channel_mult)} levels")


class UNet(nn.Module):
    """DDPM/ADM U-Net: eps/v/x0 prediction network f(x_t, t) with the shape of x_t.

    conv_in -> per level: num_res_blocks x (ResBlock [+ attention]), then a stride-2 down-sample
    (not after the last level); every output is kept as a skip -> bottleneck ResBlock,
    attention, ResBlock -> per level, reversed: (num_res_blocks + 1) x (concat skip, ResBlock
    [+ attention]), then up-sample -> GroupNorm, SiLU, zero-initialised conv_out.
    The time t in [0, 1000) enters every ResBlock through emb = MLP(sinusoid(t)).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        c0 = cfg.base_channels
        emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.augment_dim:
            # No bias: a zero condition (no augmentation, and every sample) adds nothing (EDM's map_augment).
            self.augment_embedding = nn.Linear(cfg.augment_dim, emb_dim, bias=False)

        def block(c_in: int, c_out: int, attn: bool) -> ResAttnBlock:
            res = ResBlock(
                c_in,
                c_out,
                emb_dim,
                groups=cfg.groups,
                dropout=cfg.dropout,
                scale_shift=cfg.scale_shift,
                eps=cfg.norm_eps,
            )
            return ResAttnBlock(res, self._attention(c_out) if attn else None)

        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        skip_channels = [c0]
        ch = c0
        last = len(cfg.channel_mult) - 1
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            attn = level in cfg.attention_levels
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(ch, mult * c0, attn))
                ch = mult * c0
                skip_channels.append(ch)
            down = None
            if level != last:
                down = Downsample(ch, with_conv=cfg.conv_resample, padding=cfg.downsample_padding)
                skip_channels.append(ch)
            self.down.append(_Level(blocks, down))

        # Bottleneck: ResBlock -> attention -> ResBlock.
        self.mid_in = block(ch, ch, True)
        self.mid_out = block(ch, ch, False)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            attn = level in cfg.attention_levels
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(block(ch + skip_channels.pop(), mult * c0, attn))
                ch = mult * c0
            up = Upsample(ch, with_conv=cfg.conv_resample) if level != 0 else None
            self.up.append(_Level(blocks, up))

        self.norm_out = nn.GroupNorm(cfg.groups, ch, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        for parameter in self.conv_out.parameters():
            nn.init.zeros_(parameter)

    def _attention(self, channels: int) -> SelfAttention2d:
        num_heads = max(1, channels // self.config.attention_head_dim)
        return SelfAttention2d(
            channels, num_heads=num_heads, groups=self.config.groups, eps=self.config.norm_eps, zero_init=True
        )

    def without_augmentation(self) -> UNet:
        """This network without its augmentation condition: the same function at sampling, and
        the same weights but the condition's."""
        if not self.config.augment_dim:
            return self
        plain = UNet(dataclasses.replace(self.config, augment_dim=0))
        plain.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("augment_embedding.")})
        return plain.to(self.conv_in.weight.device).train(self.training)

    def forward(self, x_t: Tensor, t: Tensor, augment: Tensor | None = None) -> Tensor:
        """x_t: [B, C, H, W] with H, W divisible by 2**(levels-1); t: [B] float timesteps;
        augment: [B, augment_dim], the augmentation of each x_t (None: none)."""
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x_t.shape[-2] % factor or x_t.shape[-1] % factor:
            raise ValueError(f"height and width must be divisible by {factor}, got {tuple(x_t.shape)}")
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        cfg = self.config
        emb = self.time_mlp(
            timestep_embedding(t, cfg.base_channels, cos_first=cfg.cos_first, freq_shift=cfg.freq_shift)
        )
        if augment is not None:
            emb = emb + self.augment_embedding(augment.to(emb.dtype))

        h = self.conv_in(x_t)
        skips = [h]
        for level in cast("list[_Level]", self.down):
            for blk in level.blocks:
                h = blk(h, emb)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid_out(self.mid_in(h, emb), emb)
        for level in cast("list[_Level]", self.up):
            for blk in level.blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
