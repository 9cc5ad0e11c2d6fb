"""Load SD-1.x VAE weights into :class:`~catdiff.models.vae.AutoencoderKL` from the published formats.

Our parameter names are diffusers' (``encoder.down_blocks.0.resnets.0.norm1.weight``), so a
diffusers ``vae/`` folder loads as is. The CompVis names (``ldm/modules/diffusionmodules/model.py``
of CompVis/stable-diffusion, used by standalone VAE files such as ``vae-ft-mse-840000-ema-pruned``
and, under ``first_stage_model.``, by full SD single files) map as follows, for ``n`` levels:

=====================================================  ==================================================
CompVis                                                ours (diffusers)
=====================================================  ==================================================
``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2}``  ``encoder.down_blocks.{i}.resnets.{j}.<same>``
``....block.{j}.nin_shortcut``                         ``....resnets.{j}.conv_shortcut``
``encoder.down.{i}.downsample.conv``                   ``encoder.down_blocks.{i}.downsamplers.0.conv``
``{encoder,decoder}.mid.block_1`` / ``block_2``        ``{encoder,decoder}.mid_block.resnets.0`` / ``.1``
``{encoder,decoder}.mid.attn_1.norm``                  ``....mid_block.attentions.0.group_norm``
``....attn_1.{q,k,v}`` (1x1 conv, ``[C, C, 1, 1]``)    ``....attentions.0.{to_q,to_k,to_v}`` (``[C, C]``)
``....attn_1.proj_out`` (1x1 conv)                     ``....attentions.0.to_out.0`` (``[C, C]``)
``decoder.up.{i}.block.{j}``                           ``decoder.up_blocks.{n-1-i}.resnets.{j}``
``decoder.up.{i}.upsample.conv``                       ``decoder.up_blocks.{n-1-i}.upsamplers.0.conv``
``{encoder,decoder}.norm_out``                         ``{encoder,decoder}.conv_norm_out``
``conv_in``, ``conv_out``, ``quant_conv``, ``post_quant_conv``  unchanged
=====================================================  ==================================================

CompVis numbers the decoder's levels by resolution (``up.0`` is the full-resolution level, built
last and ``insert``-ed at the front), diffusers by execution order, hence ``n-1-i``.

Files are never unpickled: safetensors, or ``torch.load(weights_only=True, mmap=True)``. From a
full SD single file only the ``first_stage_model.`` tensors are read. A file whose keys do not
fit the model exactly is refused with a :class:`~catdiff.errors.UserError` naming the first
offending keys, in the file's own naming. The only keys dropped silently are the training-time
state that standalone VAE releases carry: ``loss.*`` (LPIPS / discriminator) and
``model_ema.decay`` / ``model_ema.num_updates``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catdiff.errors import UserError
from catdiff.io.checkpoints import read_config, read_weights
from catdiff.io.state_dicts import assign_weights, read_state_file
from catdiff.models.vae import AutoencoderKL, AutoencoderKLConfig

__all__ = [
    "COMPVIS_PREFIX",
    "config_from_diffusers",
    "infer_config",
    "load_vae",
    "read_vae_state",
    "vae_from_state",
    "vae_state_from_compvis",
    "vae_state_to_compvis",
]

log = logging.getLogger(__name__)

#: The prefix of the VAE's tensors inside a full SD-1.x single-file checkpoint.
COMPVIS_PREFIX = "first_stage_model."
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)
#: Training-only entries of standalone CompVis VAE files, dropped on load.
_IGNORED_PREFIXES = ("loss.",)
_IGNORED_KEYS = frozenset({"model_ema.decay", "model_ema.num_updates"})

# --- the CompVis <-> diffusers key map -------------------------------------------------------

_RESNET_FROM_COMPVIS = {"nin_shortcut": "conv_shortcut"}
_ATTN_FROM_COMPVIS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET_TO_COMPVIS = {v: k for k, v in _RESNET_FROM_COMPVIS.items()}
_ATTN_TO_COMPVIS = {v: k for k, v in _ATTN_FROM_COMPVIS.items()}
_TOP_FROM_COMPVIS = {"norm_out": "conv_norm_out"}
_TOP_TO_COMPVIS = {v: k for k, v in _TOP_FROM_COMPVIS.items()}
_ATTN_LINEAR = ("to_q", "to_k", "to_v", "to_out.0")


def _compvis_levels(keys: Iterable[str]) -> int:
    """The number of resolution levels of a CompVis VAE state (from ``decoder.up.{i}`` / ``encoder.down.{i}``)."""
    found = [int(m.group(1)) for k in keys if (m := re.match(r"(?:decoder\.up|encoder\.down)\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def _key_from_compvis(key: str, levels: int) -> str:
    """One CompVis key -> ours; a key outside the map comes back unchanged (and is refused later)."""
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
        i, j, layer, p = m.groups()
        return f"encoder.down_blocks.{i}.resnets.{j}.{_RESNET_FROM_COMPVIS.get(layer, layer)}.{p}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key):
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    if (m := re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key)) and int(m[1]) < levels:
        i, j, layer, p = m.groups()
        return f"decoder.up_blocks.{levels - 1 - int(i)}.resnets.{j}.{_RESNET_FROM_COMPVIS.get(layer, layer)}.{p}"
    if (m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)) and int(m[1]) < levels:
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key):
        part, n, layer, p = m.groups()
        return f"{part}.mid_block.resnets.{int(n) - 1}.{_RESNET_FROM_COMPVIS.get(layer, layer)}.{p}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", key):
        part, layer, p = m.groups()
        return f"{part}.mid_block.attentions.0.{_ATTN_FROM_COMPVIS[layer]}.{p}"
    if m := re.fullmatch(r"(encoder|decoder)\.(norm_out)\.(weight|bias)", key):
        return f"{m[1]}.{_TOP_FROM_COMPVIS[m[2]]}.{m[3]}"
    return key


def _key_to_compvis(key: str, levels: int) -> str:
    """One key of ours -> CompVis; the inverse of :func:`_key_from_compvis`."""
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key):
        i, j, layer, p = m.groups()
        return f"encoder.down.{i}.block.{j}.{_RESNET_TO_COMPVIS.get(layer, layer)}.{p}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m and int(m[1]) < levels:
        i, j, layer, p = m.groups()
        return f"decoder.up.{levels - 1 - int(i)}.block.{j}.{_RESNET_TO_COMPVIS.get(layer, layer)}.{p}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m and int(m[1]) < levels:
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)", key):
        part, n, layer, p = m.groups()
        return f"{part}.mid.block_{int(n) + 1}.{_RESNET_TO_COMPVIS.get(layer, layer)}.{p}"
    attn = r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)"
    if m := re.fullmatch(attn, key):
        part, layer, p = m.groups()
        return f"{part}.mid.attn_1.{_ATTN_TO_COMPVIS[layer]}.{p}"
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_norm_out)\.(weight|bias)", key):
        return f"{m[1]}.{_TOP_TO_COMPVIS[m[2]]}.{m[3]}"
    return key


def _is_attn_linear_weight(key: str) -> bool:
    return ".mid_block.attentions.0." in key and any(key.endswith(f".{n}.weight") for n in _ATTN_LINEAR)


def _levels_of_ours(keys: Iterable[str]) -> int:
    pattern = re.compile(r"(?:decoder\.up_blocks|encoder\.down_blocks)\.(\d+)\.")
    found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def vae_state_from_compvis(state: Mapping[str, Tensor], *, levels: int | None = None) -> dict[str, Tensor]:
    """A CompVis-named VAE state dict (no ``first_stage_model.`` prefix) -> ours (diffusers names).

    The attention's 1x1-conv weights ``[C, C, 1, 1]`` become linear ``[C, C]`` (views, no copy).
    ``levels`` (the number of resolution levels, 4 for SD) is read from the keys when not given.
    Keys outside the map are kept unchanged, so strict loading reports them.
    """
    levels = _compvis_levels(state) if levels is None else levels
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = _key_from_compvis(key, levels)
        if _is_attn_linear_weight(new) and value.ndim == 4 and value.shape[2:] == (1, 1):
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


def vae_state_to_compvis(state: Mapping[str, Tensor], *, levels: int | None = None) -> dict[str, Tensor]:
    """Our (diffusers-named) VAE state dict -> CompVis names and shapes (attention weights ``[C, C, 1, 1]``)."""
    levels = _levels_of_ours(state) if levels is None else levels
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if _is_attn_linear_weight(key) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[_key_to_compvis(key, levels)] = value
    return out


def _fix_old_diffusers_attention(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Folders saved by older diffusers versions name the attention query/key/value/proj_attn."""
    old = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(.*\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)", key):
            key = f"{m[1]}.{old[m[2]]}.{m[3]}"
            if value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value.reshape(value.shape[0], value.shape[1])
        out[key] = value
    return out


# --- configs ------------------------------------------------------------------------------


def config_from_diffusers(config: Mapping[str, Any], *, source: Path | str = "config.json") -> AutoencoderKLConfig:
    """Our config from a diffusers ``AutoencoderKL`` ``config.json``; other VAE kinds are refused.

    Fields missing from the file take diffusers' own defaults, as diffusers does.
    """
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise UserError(f"{source} describes a diffusers {name}, not an AutoencoderKL")
    unsupported = []
    if any(t != "DownEncoderBlock2D" for t in config.get("down_block_types", ())):
        unsupported.append(f"down_block_types {config['down_block_types']}")
    if any(t != "UpDecoderBlock2D" for t in config.get("up_block_types", ())):
        unsupported.append(f"up_block_types {config['up_block_types']}")
    for field, want in (
        ("act_fn", "silu"),
        ("use_quant_conv", True),
        ("use_post_quant_conv", True),
        ("mid_block_add_attention", True),
        ("shift_factor", None),
    ):
        if config.get(field, want) != want:
            unsupported.append(f"{field}={config[field]!r}")
    if unsupported:
        raise UserError(f"{source}: this VAE is not SD-1.x-shaped ({', '.join(unsupported)})")
    block_out_channels = tuple(config.get("block_out_channels", (64,)))
    for field in ("down_block_types", "up_block_types"):
        if field in config and len(config[field]) != len(block_out_channels):
            raise UserError(f"{source}: {len(config[field])} {field} for {len(block_out_channels)} block_out_channels")
    try:
        return AutoencoderKLConfig(
            in_channels=int(config.get("in_channels", 3)),
            out_channels=int(config.get("out_channels", 3)),
            latent_channels=int(config.get("latent_channels", 4)),
            block_out_channels=block_out_channels,
            layers_per_block=int(config.get("layers_per_block", 1)),
            norm_groups=int(config.get("norm_num_groups", 32)),
            scaling_factor=float(config.get("scaling_factor", 0.18215)),
        )
    except (TypeError, ValueError) as error:
        raise UserError(f"{source}: unusable AutoencoderKL config: {error}") from None


def infer_config(
    state: Mapping[str, Tensor],
    *,
    norm_groups: int = 32,
    scaling_factor: float = 0.18215,
    source: Path | str = "weights",
) -> AutoencoderKLConfig:
    """The config of a state dict in our naming, read from the tensor shapes.

    The GroupNorm group count and the scaling factor leave no trace in the weights: they are
    SD's (32, 0.18215) unless given.
    """
    levels = _levels_of_ours(state)
    if not levels:
        raise UserError(f"{source} holds no VAE weights (no encoder/decoder blocks, no {COMPVIS_PREFIX}* keys)")

    def dim(candidates: Iterable[tuple[str, int]], what: str) -> int:
        for key, axis in candidates:
            if key in state and state[key].ndim > axis:
                return int(state[key].shape[axis])
        raise UserError(f"{source}: cannot tell the {what} of the VAE from its weights")

    widths = tuple(
        dim(
            [
                (f"encoder.down_blocks.{i}.resnets.0.conv1.weight", 0),
                (f"encoder.down_blocks.{i}.resnets.0.conv2.weight", 0),
                (f"decoder.up_blocks.{levels - 1 - i}.resnets.0.conv1.weight", 0),
                (f"decoder.up_blocks.{levels - 1 - i}.resnets.1.conv1.weight", 0),
            ],
            f"width of level {i}",
        )
        for i in range(levels)
    )
    layer_ids = [int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.\d+\.resnets\.(\d+)\.", k))]
    if not layer_ids:
        layer_ids = [int(m[1]) - 1 for k in state if (m := re.match(r"decoder\.up_blocks\.\d+\.resnets\.(\d+)\.", k))]
    if "post_quant_conv.weight" in state or "decoder.conv_in.weight" in state:
        latent = dim([("post_quant_conv.weight", 0), ("decoder.conv_in.weight", 1)], "latent channels")
    else:
        latent = dim([("quant_conv.weight", 0), ("encoder.conv_out.weight", 0)], "latent channels") // 2
    try:
        return AutoencoderKLConfig(
            in_channels=dim([("encoder.conv_in.weight", 1)], "input channels"),
            out_channels=dim([("decoder.conv_out.weight", 0)], "output channels"),
            latent_channels=latent,
            block_out_channels=widths,
            layers_per_block=max(layer_ids, default=0) + 1,
            norm_groups=norm_groups,
            scaling_factor=scaling_factor,
        )
    except ValueError as error:
        raise UserError(f"{source}: {error}; pass a config to load_vae") from None


# --- reading files ------------------------------------------------------------------------


def _select_vae_keys(keys: list[str]) -> list[str]:
    """All keys of a standalone VAE file, or only ``first_stage_model.*`` of a full SD file."""
    if any(k.startswith(COMPVIS_PREFIX) for k in keys):
        return [k for k in keys if k.startswith(COMPVIS_PREFIX)]
    return keys


def _drop_training_state(state: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    dropped = [k for k in state if k in _IGNORED_KEYS or k.startswith(_IGNORED_PREFIXES)]
    if dropped:
        log.info("%s: ignoring %d training-only entries (%s, ...)", source, len(dropped), dropped[0])
    return {k: v for k, v in state.items() if k not in dropped}


def _is_compvis(keys: Iterable[str]) -> bool:
    return any(re.match(r"(encoder\.down|decoder\.up|(encoder|decoder)\.mid)\.", k) for k in keys)


def read_vae_state(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """The VAE tensors of a standalone file or full SD single file, as stored: ``(state, prefix)``.

    ``prefix`` is ``"first_stage_model."`` when they came from a full SD checkpoint (it is
    stripped from the returned keys), else ``""``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    state = read_state_file(path, _select_vae_keys)
    prefix = COMPVIS_PREFIX if state and all(k.startswith(COMPVIS_PREFIX) for k in state) else ""
    state = {k[len(prefix) :]: v for k, v in state.items()}
    return _drop_training_state(state, path), prefix


def _build(
    config: AutoencoderKLConfig,
    state: dict[str, Tensor],
    source: Path,
    name: Callable[[str], str] = lambda k: k,
    dtype: torch.dtype = torch.float32,
) -> AutoencoderKL:
    with torch.device("meta"):
        model = AutoencoderKL(config)
    return assign_weights(model, state, source=source, what="the VAE", name=name, dtype=dtype).eval()


def _load_diffusers_folder(folder: Path, config: AutoencoderKLConfig | None, dtype: torch.dtype) -> AutoencoderKL:
    config_file = folder / DIFFUSERS_CONFIG
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"unreadable {config_file}: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{config_file} is not a JSON object")
    weights = next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise UserError(f"{folder} has no weights file (expected {DIFFUSERS_WEIGHTS[0]})")
    config = config or config_from_diffusers(raw, source=config_file)
    state = _fix_old_diffusers_attention(read_state_file(weights, lambda keys: keys))
    return _build(config, state, weights, dtype=dtype)


def _load_catdiff_folder(folder: Path, config: AutoencoderKLConfig | None, dtype: torch.dtype) -> AutoencoderKL:
    fields = read_config(folder)
    fields.pop("format", None)
    kind = fields.pop("type", "autoencoder_kl")
    if kind != "autoencoder_kl":
        raise UserError(f"{folder} holds a {kind!r} model, not an AutoencoderKL")
    if config is None:
        try:
            config = AutoencoderKLConfig(**fields)
        except (TypeError, ValueError) as error:
            raise UserError(f"{folder / 'config.json'}: unusable AutoencoderKL config: {error}") from None
    return _build(config, read_weights(folder), folder, dtype=dtype)


def load_vae(
    path: str | Path, *, config: AutoencoderKLConfig | None = None, dtype: torch.dtype = torch.float32
) -> AutoencoderKL:
    """An :class:`AutoencoderKL` (``dtype``, eval mode, CPU) with the weights at ``path``.

    ``path`` may be
      - a diffusers ``vae/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``),
        or a diffusers pipeline folder holding one;
      - a catdiff model folder of an ``autoencoder_kl``;
      - a standalone VAE file with CompVis key names (``.safetensors``, or ``.ckpt``/``.pt``
        read weights-only, the weights possibly under ``"state_dict"``) or diffusers names;
      - a full SD-1.x single file: only its ``first_stage_model.*`` tensors are read.
    For single files the shape is read from the weights; GroupNorm groups (32) and the scaling
    factor (0.18215) cannot be, so pass ``config`` for a VAE that differs there. A given
    ``config`` always wins, and the weights must then fit it exactly.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"VAE weights not found: {path} (give a diffusers vae/ folder, a VAE .safetensors/.ckpt "
            "file or a full SD-1.x checkpoint; catdiff downloads nothing)"
        )
    if path.is_dir():
        if (path / "vae" / DIFFUSERS_CONFIG).is_file() and not (path / DIFFUSERS_CONFIG).is_file():
            path = path / "vae"
        if not (path / DIFFUSERS_CONFIG).is_file():
            raise UserError(f"{path} is not a VAE folder (no {DIFFUSERS_CONFIG})")
        try:
            is_catdiff = json.loads((path / DIFFUSERS_CONFIG).read_text()).get("format", "").startswith("catdiff.")
        except (OSError, ValueError, AttributeError):
            is_catdiff = False
        load_folder = _load_catdiff_folder if is_catdiff else _load_diffusers_folder
        return load_folder(path, config, dtype)
    state, prefix = read_vae_state(path)
    return vae_from_state(state, source=path, prefix=prefix, config=config, dtype=dtype)


def vae_from_state(
    state: dict[str, Tensor],
    *,
    source: Path,
    prefix: str = "",
    config: AutoencoderKLConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> AutoencoderKL:
    """The VAE of a single file's tensors (CompVis or diffusers names, ``prefix`` already
    stripped and named again in errors), its shape read from the weights unless ``config`` is given."""
    state = _drop_training_state(state, source)
    if not state:
        raise UserError(f"{source} holds no tensors")
    if _is_compvis(state):
        levels = len(config.block_out_channels) if config else _compvis_levels(state)
        ours = vae_state_from_compvis(state, levels=levels)
        if len(ours) != len(state):  # two file keys land on one of ours (a file mixing layouts)
            landed: dict[str, list[str]] = {}
            for key in state:
                landed.setdefault(_key_from_compvis(key, levels), []).append(prefix + key)
            clash = next(keys for keys in landed.values() if len(keys) > 1)
            raise UserError(f"weights in {source} do not fit the VAE: keys {clash} name the same tensor")
        config = config or infer_config(ours, source=source)
        return _build(config, ours, source, name=lambda k: prefix + _key_to_compvis(k, levels), dtype=dtype)
    state = _fix_old_diffusers_attention(state)
    config = config or infer_config(state, source=source)
    return _build(config, state, source, name=lambda k: prefix + k, dtype=dtype)
