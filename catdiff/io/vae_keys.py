"""SD-1.x VAE weights: the CompVis <-> diffusers key map, generated from the VAE's shape.

Our parameter names are diffusers' (:mod:`catdiff.models.vae`). CompVis names
(``ldm/modules/diffusionmodules/model.py`` of CompVis/stable-diffusion, used by standalone VAE
files such as ``vae-ft-mse-840000-ema-pruned`` and, under ``first_stage_model.``, by full SD
single files) map as follows, for ``n`` levels of ``L`` ResNet blocks (``L + 1`` in the decoder):

=====================================================  ==================================================
CompVis                                                ours (diffusers)
=====================================================  ==================================================
``encoder.down.{i}.block.{j}``                         ``encoder.down_blocks.{i}.resnets.{j}``
``....block.{j}.nin_shortcut``                         ``....resnets.{j}.conv_shortcut``
``encoder.down.{i}.downsample``  (i < n-1)             ``encoder.down_blocks.{i}.downsamplers.0``
``{encoder,decoder}.mid.block_1`` / ``block_2``        ``{encoder,decoder}.mid_block.resnets.0`` / ``.1``
``{encoder,decoder}.mid.attn_1.norm``                  ``....mid_block.attentions.0.group_norm``
``....attn_1.{q,k,v}`` (1x1 conv, ``[C, C, 1, 1]``)    ``....attentions.0.{to_q,to_k,to_v}`` (``[C, C]``)
``....attn_1.proj_out`` (1x1 conv)                     ``....attentions.0.to_out.0`` (``[C, C]``)
``decoder.up.{i}.block.{j}``                           ``decoder.up_blocks.{n-1-i}.resnets.{j}``
``decoder.up.{i}.upsample``  (i > 0)                   ``decoder.up_blocks.{n-1-i}.upsamplers.0``
``{encoder,decoder}.norm_out``                         ``{encoder,decoder}.conv_norm_out``
``conv_in``, ``conv_out``, ``quant_conv``, ``post_quant_conv``  unchanged
=====================================================  ==================================================

CompVis numbers the decoder's levels by resolution (``up.0`` is the full-resolution level, built
last and ``insert``-ed at the front), diffusers by execution order, hence ``n-1-i``. Older
diffusers versions named the attention ``query``/``key``/``value``/``proj_attn``, as 1x1 convs.
The map is generated in one direction (:func:`_module_pairs`) and inverted for the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

from torch import Tensor

from catdiff.io.state_dicts import KeyNamer, rename_key

__all__ = [
    "compvis_file_names",
    "compvis_key_namer",
    "compvis_shape",
    "fix_old_diffusers_attention",
    "is_compvis",
    "our_shape",
    "vae_key_map",
    "vae_state_from_compvis",
    "vae_state_to_compvis",
]

_PARTS = ("encoder", "decoder")
_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_OLD_DIFFUSERS_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
#: Our attention projections: linear ``[C, C]`` weights, stored as 1x1 convs ``[C, C, 1, 1]`` by CompVis.
_LINEAR = frozenset(f"{part}.mid_block.attentions.0.{name}" for part in _PARTS for name in _ATTENTION.values())


def _resnet(compvis: str, ours: str) -> Iterator[tuple[str, str]]:
    yield compvis, ours
    yield f"{compvis}.nin_shortcut", f"{ours}.conv_shortcut"


def _module_pairs(levels: int, layers: int) -> Iterator[tuple[str, str]]:
    """(CompVis module path, our module path) for every module whose name differs, in a VAE of
    ``levels`` resolution levels and ``layers`` ResNet blocks per encoder level."""
    for part in _PARTS:
        yield from _resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0")
        yield from _resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1")
        yield f"{part}.mid.attn_1.norm", f"{part}.mid_block.attentions.0.group_norm"
        for compvis, ours in _ATTENTION.items():
            yield f"{part}.mid.attn_1.{compvis}", f"{part}.mid_block.attentions.0.{ours}"
        yield f"{part}.norm_out", f"{part}.conv_norm_out"
    for i in range(levels):
        for j in range(layers):
            yield from _resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}")
        if i < levels - 1:
            yield f"encoder.down.{i}.downsample", f"encoder.down_blocks.{i}.downsamplers.0"
        up = levels - 1 - i
        for j in range(layers + 1):
            yield from _resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}")
        if i > 0:
            yield f"decoder.up.{i}.upsample", f"decoder.up_blocks.{up}.upsamplers.0"


def vae_key_map(levels: int, layers: int) -> dict[str, str]:
    """CompVis module path -> our module path, for a VAE of this shape."""
    return dict(_module_pairs(levels, layers))


def _shape(keys: Iterable[str], encoder: str, decoder: str) -> tuple[int, int]:
    """(levels, ResNet blocks per encoder level) from the ``(level, block)`` numbers the patterns
    ``encoder`` and ``decoder`` match; (0, 0) when neither does."""
    keys = list(keys)
    down = [(int(m[1]), int(m[2])) for k in keys if (m := re.match(encoder, k))]
    up = [(int(m[1]), int(m[2])) for k in keys if (m := re.match(decoder, k))]
    levels = 1 + max((i for i, _ in down + up), default=-1)
    layers = 1 + max(j for _, j in down) if down else max((j for _, j in up), default=0)
    return levels, layers


def compvis_shape(keys: Iterable[str]) -> tuple[int, int]:
    """(levels, layers per block) of a CompVis-named VAE state."""
    return _shape(keys, r"encoder\.down\.(\d+)\.block\.(\d+)\.", r"decoder\.up\.(\d+)\.block\.(\d+)\.")


def our_shape(keys: Iterable[str]) -> tuple[int, int]:
    """(levels, layers per block) of a VAE state in our (diffusers) naming."""
    return _shape(
        keys, r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\."
    )


def is_compvis(keys: Iterable[str]) -> bool:
    return any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")) for k in keys)


def _is_projection_weight(key: str) -> bool:
    module, _, parameter = key.rpartition(".")
    return parameter == "weight" and module in _LINEAR


def _renamed(state: Mapping[str, Tensor], modules: Mapping[str, str], *, conv: bool) -> dict[str, Tensor]:
    """``state`` with its keys renamed by ``modules`` (unknown keys pass unchanged) and the attention
    projection weights as 1x1 convs ``[C, C, 1, 1]`` (``conv``) or linear ``[C, C]`` (views, no copy)."""
    out = {}
    for key, value in state.items():
        new = rename_key(key, modules)
        if _is_projection_weight(key) or _is_projection_weight(new):
            if conv and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
            elif not conv and value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


def vae_state_from_compvis(state: Mapping[str, Tensor], *, shape: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """A CompVis-named VAE state dict (no ``first_stage_model.`` prefix) -> ours (diffusers names).

    The attention's 1x1-conv weights ``[C, C, 1, 1]`` become linear ``[C, C]`` (views, no copy).
    ``shape`` (levels, layers per block: (4, 2) for SD) is read from the keys when not given.
    Keys outside the map are kept unchanged, so strict loading reports them.
    """
    return _renamed(state, vae_key_map(*(shape or compvis_shape(state))), conv=False)


def vae_state_to_compvis(state: Mapping[str, Tensor], *, shape: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """Our VAE state dict -> CompVis names and shapes (the inverse of :func:`vae_state_from_compvis`)."""
    modules = {ours: compvis for compvis, ours in vae_key_map(*(shape or our_shape(state))).items()}
    return _renamed(state, modules, conv=True)


def compvis_file_names(keys: Iterable[str], levels: int, layers: int) -> dict[str, list[str]]:
    """Our key -> the CompVis keys that map to it; more than one means a file mixing layouts."""
    modules = vae_key_map(levels, layers)
    names: dict[str, list[str]] = {}
    for key in keys:
        names.setdefault(rename_key(key, modules), []).append(key)
    return names


def compvis_key_namer(levels: int, layers: int) -> KeyNamer:
    """A function naming one of our keys as the CompVis map spells it (for error messages)."""
    modules = {ours: compvis for compvis, ours in vae_key_map(levels, layers).items()}
    return lambda key: rename_key(key, modules)


def fix_old_diffusers_attention(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Folders saved by older diffusers versions name the attention query/key/value/proj_attn."""
    modules = {
        f"{part}.mid_block.attentions.0.{old}": f"{part}.mid_block.attentions.0.{new}"
        for part in _PARTS
        for old, new in _OLD_DIFFUSERS_ATTENTION.items()
    }
    return _renamed(state, modules, conv=False)
