"""SD-1.x U-Net weights: the CompVis <-> diffusers key map, and configs from files.

Our parameter names are diffusers' (:mod:`catdiff.sd.unet`). CompVis single files
(``ldm/modules/diffusionmodules/openaimodel.py``, under ``model.diffusion_model.``) number
their blocks in execution order instead of by level. With ``L = layers_per_block``:

=================================================  ==============================================
CompVis                                            ours (diffusers)
=================================================  ==============================================
``time_embed.0`` / ``time_embed.2``                ``time_embedding.linear_1`` / ``linear_2``
``input_blocks.0.0``                               ``conv_in``
``input_blocks.{k}.0`` (a ResBlock)                ``down_blocks.{i}.resnets.{j}``, k = 1 + i(L+1) + j
``input_blocks.{k}.1`` (a SpatialTransformer)      ``down_blocks.{i}.attentions.{j}``
``input_blocks.{1 + i(L+1) + L}.0.op``             ``down_blocks.{i}.downsamplers.0.conv``
``middle_block.0`` / ``.1`` / ``.2``               ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.{k}.0``                            ``up_blocks.{i}.resnets.{j}``, k = i(L+1) + j
``output_blocks.{k}.1``                            ``up_blocks.{i}.attentions.{j}``
``output_blocks.{i(L+1) + L}.{1|2}.conv``          ``up_blocks.{i}.upsamplers.0.conv`` (2 after a transformer)
``out.0`` / ``out.2``                              ``conv_norm_out`` / ``conv_out``
=================================================  ==============================================

Inside a ResBlock: ``in_layers.0`` -> ``norm1``, ``in_layers.2`` -> ``conv1``, ``emb_layers.1``
-> ``time_emb_proj``, ``out_layers.0`` -> ``norm2``, ``out_layers.3`` -> ``conv2``,
``skip_connection`` -> ``conv_shortcut``. Inside a spatial transformer the names agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from catdiff.errors import UserError
from catdiff.io.state_dicts import KeyNamer, rename_key
from catdiff.sd.unet import SDUNetConfig

__all__ = [
    "COMPVIS_PREFIX",
    "config_from_diffusers",
    "infer_config",
    "unet_key_map",
    "unet_state_from_compvis",
    "unet_state_to_compvis",
]

#: The prefix of the U-Net's tensors inside a CompVis single file.
COMPVIS_PREFIX = "model.diffusion_model."

_RESNET_LAYERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _resnet(compvis: str, ours: str) -> Iterator[tuple[str, str]]:
    for old, new in _RESNET_LAYERS.items():
        yield f"{compvis}.{old}", f"{ours}.{new}"


def _module_pairs(config: SDUNetConfig) -> Iterator[tuple[str, str]]:
    """(CompVis module path, our module path) for every module that holds weights directly,
    or (for spatial transformers) whose sub-modules are named alike."""
    levels, L = len(config.block_out_channels), config.layers_per_block
    yield from (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"))
    yield "input_blocks.0.0", "conv_in"
    k = 1
    for i, attention in enumerate(config.cross_attention):
        for j in range(L):
            yield from _resnet(f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}")
            if attention:
                yield f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}"
            k += 1
        if i < levels - 1:
            yield f"input_blocks.{k}.0.op", f"down_blocks.{i}.downsamplers.0.conv"
            k += 1
    yield from _resnet("middle_block.0", "mid_block.resnets.0")
    yield "middle_block.1", "mid_block.attentions.0"
    yield from _resnet("middle_block.2", "mid_block.resnets.1")
    for i, attention in enumerate(reversed(config.cross_attention)):
        for j in range(L + 1):
            k = i * (L + 1) + j
            yield from _resnet(f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}")
            if attention:
                yield f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}"
        if i < levels - 1:
            yield f"output_blocks.{k}.{2 if attention else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv"
    yield from (("out.0", "conv_norm_out"), ("out.2", "conv_out"))


def unet_key_map(config: SDUNetConfig) -> dict[str, str]:
    """CompVis module path -> our module path, for a U-Net of this shape."""
    return dict(_module_pairs(config))


def unet_state_from_compvis(state: Mapping[str, Tensor], config: SDUNetConfig) -> dict[str, Tensor]:
    """CompVis U-Net tensors (``model.diffusion_model.`` stripped) -> ours; unknown keys pass unchanged."""
    modules = unet_key_map(config)
    return {rename_key(key, modules): value for key, value in state.items()}


def unet_state_to_compvis(state: Mapping[str, Tensor], config: SDUNetConfig) -> dict[str, Tensor]:
    """Our U-Net tensors -> CompVis names (the inverse of :func:`unet_state_from_compvis`)."""
    modules = {ours: compvis for compvis, ours in unet_key_map(config).items()}
    return {rename_key(key, modules): value for key, value in state.items()}


def compvis_key_namer(config: SDUNetConfig, prefix: str = COMPVIS_PREFIX) -> KeyNamer:
    """A function naming one of our keys as the CompVis file spells it (for error messages)."""
    modules = {ours: compvis for compvis, ours in unet_key_map(config).items()}
    return lambda key: prefix + rename_key(key, modules)


# --- configs ----------------------------------------------------------------------------------


def infer_config(state: Mapping[str, Tensor], *, source: Path) -> SDUNetConfig:
    """The shape of a CompVis U-Net state dict (prefix stripped), read from its tensors.

    Head counts and GroupNorm groups leave no trace in the weights: they are SD-1.x's (8 heads
    on every level, 32 groups).
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise UserError(f"{source}: no {COMPVIS_PREFIX}{key}; not an SD-1.x U-Net")
        return tuple(state[key].shape)

    input_blocks = {int(m[1]) for k in state if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    downsamplers = sorted(int(m[1]) for k in state if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    if not downsamplers:
        raise UserError(f"{source}: no down-sampling convs in {COMPVIS_PREFIX}input_blocks; not an SD-1.x U-Net")
    layers_per_block = downsamplers[0] - 1
    levels = len(downsamplers) + 1
    if max(input_blocks) != levels * (layers_per_block + 1) - 1:
        raise UserError(f"{source}: {COMPVIS_PREFIX}input_blocks do not form {levels} levels of {layers_per_block}")
    first_of_level = [1 + i * (layers_per_block + 1) for i in range(levels)]
    attention_key = "input_blocks.{}.1.transformer_blocks.0.attn2.to_k.weight"
    try:
        return SDUNetConfig(
            in_channels=shape("input_blocks.0.0.weight")[1],
            out_channels=shape("out.2.weight")[0],
            block_out_channels=tuple(shape(f"input_blocks.{k}.0.out_layers.3.weight")[0] for k in first_of_level),
            cross_attention=tuple(attention_key.format(k) in state for k in first_of_level),
            layers_per_block=layers_per_block,
            attention_heads=8,
            cross_attention_dim=shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1],
        )
    except ValueError as error:
        raise UserError(f"{source}: unusable U-Net shape: {error}") from None


# diffusers UNet2DConditionModel config fields whose SD-1.x values we implement; others are refused.
_SD1_FIELDS: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": None,
    "center_input_sample": False,
    "class_embed_type": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "num_class_embeds": None,
    "only_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "time_cond_proj_dim": None,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": 1,
    "upcast_attention": False,
    "use_linear_projection": False,
}
_DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def config_from_diffusers(config: Mapping[str, Any], *, source: Path) -> SDUNetConfig:
    """Our config from a diffusers ``unet/config.json``; anything not SD-1.x-shaped is refused."""
    unsupported = [f"{k}={config[k]!r}" for k, want in _SD1_FIELDS.items() if config.get(k, want) != want]
    down = list(config.get("down_block_types", ()))
    up = list(config.get("up_block_types", ()))
    if (
        any(t not in _DOWN_BLOCKS for t in down)
        or [_UP_BLOCKS.get(t) for t in up] != [_DOWN_BLOCKS[t] for t in down][::-1]
    ):
        unsupported.append(f"blocks {down} / {up}")
    if unsupported:
        raise UserError(f"{source}: this U-Net is not SD-1.x-shaped ({', '.join(unsupported)})")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    try:
        return SDUNetConfig(
            in_channels=int(config.get("in_channels", 4)),
            out_channels=int(config.get("out_channels", 4)),
            block_out_channels=tuple(config["block_out_channels"]),
            cross_attention=tuple(_DOWN_BLOCKS[t] for t in down),
            layers_per_block=int(config.get("layers_per_block", 2)),
            attention_heads=heads if isinstance(heads, int) else tuple(heads),
            cross_attention_dim=int(config.get("cross_attention_dim", 1280)),
            norm_groups=int(config.get("norm_num_groups", 32)),
            norm_eps=float(config.get("norm_eps", 1e-5)),
            sample_size=int(config.get("sample_size", 64)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{source}: unusable UNet2DConditionModel config: {error!r}") from None
