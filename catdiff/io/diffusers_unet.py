"""diffusers' ``UNet2DModel`` <-> catdiff's :class:`~catdiff.models.unet.UNet`: configs and weights.

The two are one network (Ho et al. 2020; Dhariwal & Nichol 2021) under other names. A
``UNet2DModel`` of ``DownBlock2D`` / ``AttnDownBlock2D`` levels mirrored by ``UpBlock2D`` /
``AttnUpBlock2D`` ones, a ``UNetMidBlock2D`` and a positional time embedding maps to a catdiff
``UNet`` config (:func:`unet_config_from_diffusers`); its weights are renamed by rule
(:func:`unet_state_from_diffusers`, and the inverse for export). Any other configuration is a
one-line :class:`~catdiff.errors.UserError` naming what is not supported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from catdiff.errors import UserError
from catdiff.models.unet import UNetConfig

__all__ = [
    "diffusers_config_from_unet",
    "unet_config_from_diffusers",
    "unet_state_from_diffusers",
    "unet_state_to_diffusers",
]

DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# Settings catdiff's U-Net has no counterpart for: what they must be.
FIXED = {
    "time_embedding_type": "positional",
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2D",
    "act_fn": "silu",
    "downsample_type": "conv",
    "upsample_type": "conv",
    "class_embed_type": None,
    "num_class_embeds": None,
    "add_attention": True,
    "mid_block_scale_factor": 1,
}


def unsupported(what: str) -> UserError:
    return UserError(f"this diffusers UNet2DModel is not supported by catdiff: {what}")


def unet_config_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``build_model`` config of the catdiff U-Net that is this ``UNet2DModel`` config
    (the defaults diffusers fills in for keys the file leaves out included)."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise unsupported(f"it is a {config.get('_class_name')}, not a UNet2DModel")
    for key, value in FIXED.items():
        if config.get(key, value) != value:
            raise unsupported(f"{key} {config.get(key)!r} (catdiff has {value!r})")
    down, up = config.get("down_block_types"), config.get("up_block_types")
    channels = list(config.get("block_out_channels", ()))
    if not down or not up or len(down) != len(up) or len(down) != len(channels):
        raise unsupported("down_block_types, up_block_types and block_out_channels must have one entry per level")
    for kind in [*down, *up]:
        if kind not in DOWN_BLOCKS and kind not in UP_BLOCKS:
            raise unsupported(f"block type {kind!r} (only {', '.join([*DOWN_BLOCKS, *UP_BLOCKS])})")
    attention = [level for level, kind in enumerate(down) if DOWN_BLOCKS.get(kind, False)]
    if [level for level, kind in enumerate(reversed(up)) if UP_BLOCKS.get(kind, False)] != attention:
        raise unsupported("its up blocks' attention does not mirror its down blocks'")
    base = channels[0]
    if any(c % base for c in channels):
        raise unsupported(f"block_out_channels {channels} are not multiples of the first")
    if config.get("time_embedding_dim") not in (None, 4 * base):
        raise unsupported(f"time_embedding_dim {config['time_embedding_dim']} (catdiff has 4 x {base})")
    groups = config.get("norm_num_groups", 32)
    shift = config.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise unsupported(f"resnet_time_scale_shift {shift!r}")
    attn_groups = config.get("attn_norm_num_groups")
    if attn_groups is None and shift == "scale_shift" or attn_groups not in (None, groups):
        raise unsupported(f"attn_norm_num_groups {attn_groups} (catdiff normalises attention like its resnets)")
    layers = config.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise unsupported(f"layers_per_block {layers!r} (one number for every level)")
    head_dim = config.get("attention_head_dim", 8)
    return {
        "type": "unet",
        "in_channels": config.get("in_channels", 3),
        "out_channels": config.get("out_channels", 3),
        "base_channels": base,
        "channel_mult": [c // base for c in channels],
        "num_res_blocks": layers,
        "attention_levels": attention,
        "attention_head_dim": max(channels) if head_dim is None else head_dim,  # None: one head everywhere
        "dropout": config.get("dropout", 0.0),
        "groups": groups,
        "conv_resample": True,
        "scale_shift": shift == "scale_shift",
        "cos_first": config.get("flip_sin_to_cos", True),
        "freq_shift": float(config.get("freq_shift", 0)),
        "norm_eps": config.get("norm_eps", 1e-5),
        "downsample_padding": config.get("downsample_padding", 1),
    }


def diffusers_config_from_unet(config: UNetConfig, sample_size: int) -> dict[str, Any]:
    """The ``UNet2DModel`` config of a catdiff U-Net (the inverse of :func:`unet_config_from_diffusers`)."""
    if config.augment_dim:
        raise UserError("export the network without its augmentation input (Pipeline.save does)")
    channels = [m * config.base_channels for m in config.channel_mult]
    attended = [channels[level] for level in config.attention_levels] + [channels[-1]]
    heads = [max(1, c // config.attention_head_dim) for c in attended]
    if all(h == 1 for h in heads):
        head_dim = None  # diffusers' "one head per block"
    elif all(c % config.attention_head_dim == 0 and c >= config.attention_head_dim for c in attended):
        head_dim = config.attention_head_dim
    else:
        raise UserError(
            f"attention of {attended} channels in heads of {config.attention_head_dim} has no diffusers form"
        )
    levels = range(len(channels))
    return {
        "_class_name": "UNet2DModel",
        "sample_size": sample_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "block_out_channels": channels,
        "down_block_types": ["AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels],
        "up_block_types": ["AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(levels)],
        "layers_per_block": config.num_res_blocks,
        "attention_head_dim": head_dim,
        "norm_num_groups": config.groups,
        "attn_norm_num_groups": config.groups,
        "norm_eps": config.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if config.scale_shift else "default",
        "flip_sin_to_cos": config.cos_first,
        "freq_shift": config.freq_shift,
        "downsample_padding": config.downsample_padding,
        "dropout": config.dropout,
        **{key: value for key, value in FIXED.items() if value is not None},
    }


# (catdiff name, diffusers name) of each module, {i} the level and {j} the block in it.
_RES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2", "skip": "conv_shortcut"}  # fmt: skip
_ATTN = {"norm": "group_norm", "to_out": "to_out.0"}
_RULES = [
    ("conv_in", "conv_in"),
    ("time_mlp.0", "time_embedding.linear_1"),
    ("time_mlp.2", "time_embedding.linear_2"),
    ("norm_out", "conv_norm_out"),
    ("conv_out", "conv_out"),
    ("down.{i}.resample.op", "down_blocks.{i}.downsamplers.0.conv"),
    ("up.{i}.resample.conv", "up_blocks.{i}.upsamplers.0.conv"),
    *((f"{side}.{{i}}.blocks.{{j}}.res.{ours}", f"{theirs}_blocks.{{i}}.resnets.{{j}}.{name}")
      for side, theirs in (("down", "down"), ("up", "up")) for ours, name in _RES.items()),
    *((f"{side}.{{i}}.blocks.{{j}}.attn.{ours}", f"{theirs}_blocks.{{i}}.attentions.{{j}}.{name}")
      for side, theirs in (("down", "down"), ("up", "up")) for ours, name in {**_ATTN, "to_qkv": "to_qkv"}.items()),
    *((f"mid_in.res.{ours}", f"mid_block.resnets.0.{name}") for ours, name in _RES.items()),
    *((f"mid_out.res.{ours}", f"mid_block.resnets.1.{name}") for ours, name in _RES.items()),
    *((f"mid_in.attn.{ours}", f"mid_block.attentions.0.{name}") for ours, name in {**_ATTN, "to_qkv": "to_qkv"}.items()),
]  # fmt: skip


def _pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(escaped + r"\.(?P<param>weight|bias)$")


_TO_DIFFUSERS = [(_pattern(ours), theirs) for ours, theirs in _RULES]
_FROM_DIFFUSERS = [(_pattern(theirs), ours) for ours, theirs in _RULES]


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        match = pattern.fullmatch(name)
        if match:
            return target.format(**{k: v for k, v in match.groupdict().items() if k != "param"}) + "." + match["param"]
    return None


def unet_state_to_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """catdiff U-Net weights under ``UNet2DModel``'s names; the fused attention projection
    ``to_qkv`` becomes diffusers' ``to_q``, ``to_k`` and ``to_v``."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        renamed = _rename(name, _TO_DIFFUSERS)
        if renamed is None:
            raise ValueError(f"no diffusers name for catdiff U-Net weight {name!r}")
        if ".to_qkv." in renamed:
            for part, chunk in zip(("to_q", "to_k", "to_v"), tensor.chunk(3, dim=0), strict=True):
                out[renamed.replace("to_qkv", part)] = chunk.contiguous()
        else:
            out[renamed] = tensor
    return out


def unet_state_from_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``UNet2DModel`` weights under catdiff's names (the inverse of :func:`unet_state_to_diffusers`);
    a weight with no catdiff counterpart is a :class:`UserError` naming it."""
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"(?P<head>.+\.attentions\.\d+)\.to_(?P<part>[qkv])\.(?P<param>weight|bias)", name)
        if match:
            fused.setdefault(f"{match['head']}.to_qkv.{match['param']}", {})[match["part"]] = tensor
            continue
        renamed = _rename(name, _FROM_DIFFUSERS)
        if renamed is None:
            raise unsupported(f"it has a weight {name!r} that catdiff's U-Net has no place for")
        out[renamed] = tensor
    for name, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise unsupported(f"attention weights {name} lack one of to_q, to_k, to_v")
        out[_rename(name, _FROM_DIFFUSERS) or name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
