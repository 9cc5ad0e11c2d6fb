"""The Stable Diffusion 1.x conditional U-Net, with diffusers' parameter names.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (the
latent-space U-Net whose attention levels hold "spatial transformers" that cross-attend to the
text encoder's hidden states); Ho et al. 2020 and Dhariwal & Nichol 2021 (the residual U-Net
with a sinusoidal timestep embedding added in every residual block); Vaswani et al. 2017
(attention); Shazeer 2020, "GLU Variants Improve Transformer" (the GEGLU feed-forward).

The module tree mirrors diffusers' ``UNet2DConditionModel`` as SD-1.x configures it
(``conv_in``, ``time_embedding``, ``down_blocks.{i}.resnets/attentions/downsamplers``,
``mid_block``, ``up_blocks``, ``conv_norm_out``, ``conv_out``; each attention block a
``Transformer2DModel`` with 1x1-conv ``proj_in``/``proj_out``), so a diffusers ``unet/`` folder
loads with no remapping; :mod:`catdiff.sd.unet_keys` maps the CompVis names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catdiff.models.embeddings import timestep_embedding

__all__ = ["SDUNet", "SDUNetConfig"]


@dataclass
class SDUNetConfig:
    """Shape of an :class:`SDUNet`; the defaults are SD-1.x's (860M parameters).

    ``block_out_channels[i]`` is the width of resolution level ``i``; ``cross_attention[i]``
    says whether its blocks hold spatial transformers (diffusers' ``CrossAttnDownBlock2D`` /
    ``CrossAttnUpBlock2D``) or only residual blocks (``DownBlock2D`` / ``UpBlock2D``).
    ``attention_heads`` is the head count of each level, or one count for all (diffusers
    calls it ``attention_head_dim``); each head is ``width / heads`` wide. ``sample_size`` is the
    latent side the model was trained at (64 latents = 512 pixels for SD-1.x).
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    cross_attention: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    attention_heads: int | tuple[int, ...] = 8
    cross_attention_dim: int = 768
    norm_groups: int = 32
    norm_eps: float = 1e-5
    sample_size: int = 64

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.cross_attention = tuple(bool(a) for a in self.cross_attention)
        if isinstance(self.attention_heads, int):
            self.attention_heads = (self.attention_heads,) * levels
        self.attention_heads = tuple(int(h) for h in self.attention_heads)
        if not levels or len(self.cross_attention) != levels or len(self.attention_heads) != levels:
            raise ValueError("block_out_channels, cross_attention and attention_heads need one entry per level")
        bad = [
            (c, h)
            for c, h in zip(self.block_out_channels, self.attention_heads, strict=True)
            if c % h or c % self.norm_groups
        ]
        if bad:
            raise ValueError(
                f"widths {bad} (width, heads) do not divide by their heads or by {self.norm_groups} groups"
            )

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]


# --- residual blocks --------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """h = conv1(SiLU(GN(x))) + W_t SiLU(emb); out = skip(x) + conv2(SiLU(GN(h))) (Ho et al. 2020)."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, *, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample2D(nn.Module):
    """A stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour up-sampling to ``size`` (twice the side, or the skip's odd side), then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepEmbedding(nn.Module):
    """The MLP over the sinusoidal timestep features: linear -> SiLU -> linear."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


# --- the spatial transformer (Rombach et al. 2022, fig. 3) -----------------------------------


class Attention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V over ``heads`` heads; keys and values come from ``context``
    (cross-attention) or from ``x`` itself. Only the output projection has a bias."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        B, N, C = x.shape
        q = self.to_q(x).view(B, N, self.heads, -1).transpose(1, 2)
        k, v = (
            proj(context).view(B, context.shape[1], self.heads, -1).transpose(1, 2) for proj in (self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """proj(x) split into (h, gate) -> h * GELU(gate) (Shazeer 2020)."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4x the width, then back; ``net`` is indexed as diffusers' (``net.1`` is dropout)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LN: x + self-attention, x + cross-attention to the text, x + GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """The spatial transformer: GN -> 1x1 conv -> a transformer block over the h*w positions ->
    1x1 conv, added to the input."""

    def __init__(self, channels: int, heads: int, context_dim: int, *, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, C)
        for block in self.transformer_blocks:
            h = block(h, context)
        return x + self.proj_out(h.reshape(B, H, W, C).permute(0, 3, 1, 2))


# --- levels ----------------------------------------------------------------------------------


def _resnet(c: SDUNetConfig, c_in: int, c_out: int) -> ResnetBlock2D:
    return ResnetBlock2D(c_in, c_out, c.time_embed_dim, groups=c.norm_groups, eps=c.norm_eps)


def _transformers(c: SDUNetConfig, level: int, width: int, n: int) -> nn.ModuleList:
    """``n`` spatial transformers for an attention level, none for a plain one."""
    count = n if c.cross_attention[level] else 0
    heads = c.attention_heads[level]
    return nn.ModuleList(
        Transformer2DModel(width, heads, c.cross_attention_dim, groups=c.norm_groups) for _ in range(count)
    )


class DownBlock(nn.Module):
    """Encoder level ``level``: residual blocks (each followed by a spatial transformer on
    attention levels), then a stride-2 conv except on the last level. Every block's output is
    kept for the decoder's skip connections."""

    def __init__(self, c: SDUNetConfig, level: int, c_in: int) -> None:
        super().__init__()
        c_out, n = c.block_out_channels[level], c.layers_per_block
        self.resnets = nn.ModuleList(_resnet(c, c_in if j == 0 else c_out, c_out) for j in range(n))
        self.attentions = _transformers(c, level, c_out, n)
        is_last = level == len(c.block_out_channels) - 1
        self.downsamplers = nn.ModuleList([] if is_last else [Downsample2D(c_out)])

    def forward(self, x: Tensor, emb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, emb)
            if self.attentions:
                x = self.attentions[j](x, context)
            skips.append(x)
        for downsample in self.downsamplers:
            x = downsample(x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """Decoder block ``i`` (level ``n_levels - 1 - i``): ``layers_per_block + 1`` residual
    blocks, each fed the newest skip concatenated on the channels (and followed by a spatial
    transformer on attention levels), then an up-sampler except on the last block.

    The last residual block's skip comes from the level below (the down-sampler's output),
    hence its width ``c_skip_last``.
    """

    def __init__(self, c: SDUNetConfig, level: int, c_in: int, c_skip_last: int) -> None:
        super().__init__()
        c_out, n = c.block_out_channels[level], c.layers_per_block + 1
        widths_in = [(c_in if j == 0 else c_out) + (c_skip_last if j == n - 1 else c_out) for j in range(n)]
        self.resnets = nn.ModuleList(_resnet(c, w, c_out) for w in widths_in)
        self.attentions = _transformers(c, level, c_out, n)
        self.upsamplers = nn.ModuleList([] if level == 0 else [Upsample2D(c_out)])

    def forward(self, x: Tensor, skips: list[Tensor], emb: Tensor, context: Tensor) -> Tensor:
        """Consumes this level's skips from the end of ``skips``; up-samples to the next one's size."""
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), emb)
            if self.attentions:
                x = self.attentions[j](x, context)
        for upsample in self.upsamplers:
            x = upsample(x, tuple(skips[-1].shape[-2:]))
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    """Residual block -> spatial transformer -> residual block at the lowest resolution."""

    def __init__(self, c: SDUNetConfig) -> None:
        super().__init__()
        width = c.block_out_channels[-1]
        self.resnets = nn.ModuleList([_resnet(c, width, width), _resnet(c, width, width)])
        heads = c.attention_heads[-1]
        self.attentions = nn.ModuleList([Transformer2DModel(width, heads, c.cross_attention_dim, groups=c.norm_groups)])

    def forward(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        x = self.resnets[0](x, emb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, emb)


class SDUNet(nn.Module):
    """eps-prediction network ``(x_t [B, 4, h, w], t [B], context [B, 77, 768]) -> eps [B, 4, h, w]``.

    ``t`` may be fractional; ``context`` is the text encoder's last hidden state.
    """

    def __init__(self, config: SDUNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SDUNetConfig()
        widths = c.block_out_channels
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], c.time_embed_dim)
        levels = range(len(widths))
        self.down_blocks = nn.ModuleList(DownBlock(c, i, widths[max(i - 1, 0)]) for i in levels)
        self.mid_block = UNetMidBlock2DCrossAttn(c)
        self.up_blocks = nn.ModuleList(
            UpBlock(c, i, widths[min(i + 1, levels[-1])], widths[max(i - 1, 0)]) for i in reversed(levels)
        )
        self.conv_norm_out = nn.GroupNorm(c.norm_groups, widths[0], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], c.out_channels, 3, padding=1)

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        features = timestep_embedding(t.expand(x_t.shape[0]), self.config.block_out_channels[0])
        emb = self.time_embedding(features.to(x_t.dtype))
        x = self.conv_in(x_t)
        skips = [x]
        for block in self.down_blocks:
            x, level_skips = block(x, emb, context)
            skips += level_skips
        x = self.mid_block(x, emb, context)
        for block in self.up_blocks:
            x = block(x, skips, emb, context)
        return self.conv_out(F.silu(self.conv_norm_out(x)))
