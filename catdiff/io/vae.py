"""Load SD-1.x VAE weights into :class:`~catdiff.models.vae.AutoencoderKL` from the published formats.

Our parameter names are diffusers' (``encoder.down_blocks.0.resnets.0.norm1.weight``), so a
diffusers ``vae/`` folder loads as is; the CompVis names of standalone VAE files and full SD
single files are mapped by :mod:`catdiff.io.vae_keys`. The diffusers config of the Encoder /
Decoder shape is translated both ways here, for :mod:`catdiff.io.diffusers_autoencoders` too.

Files are never unpickled: safetensors, or ``torch.load(weights_only=True, mmap=True)``. From a
full SD single file only the ``first_stage_model.`` tensors are read. A file whose keys do not
fit the model exactly is refused with a :class:`~catdiff.errors.UserError` naming the first
offending keys, in the file's own naming. The only keys dropped silently are the training-time
state that standalone VAE releases carry: ``loss.*`` (LPIPS / discriminator) and
``model_ema.decay`` / ``model_ema.num_updates``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catdiff.errors import UserError
from catdiff.io.checkpoints import CONFIG_FILE, read_config, read_weights, write_model_folder
from catdiff.io.json_files import read_json
from catdiff.io.state_dicts import KeyNamer, load_state_strict, read_state_file
from catdiff.io.vae_keys import (
    compvis_file_names,
    compvis_key_namer,
    compvis_shape,
    fix_old_diffusers_attention,
    is_compvis,
    our_shape,
    vae_state_from_compvis,
)
from catdiff.models import model_config
from catdiff.models.vae import AutoencoderKL, AutoencoderKLConfig, EncoderDecoderConfig

__all__ = [
    "COMPVIS_PREFIX",
    "DIFFUSERS_CONFIG",
    "DIFFUSERS_VERSION",
    "DIFFUSERS_WEIGHTS",
    "config_from_diffusers",
    "config_to_diffusers",
    "diffusers_weights_file",
    "encoder_decoder_fields",
    "encoder_decoder_to_diffusers",
    "infer_config",
    "load_vae",
    "read_vae_state",
    "save_vae",
    "vae_from_state",
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

# --- configs ------------------------------------------------------------------------------

#: The ``_diffusers_version`` written into config files: the oldest diffusers (catdiff's test
#: floor) that reads the folders catdiff writes.
DIFFUSERS_VERSION = "0.30.0"
#: The diffusers config values our Encoder / Decoder blocks build (:mod:`catdiff.models.vae`);
#: diffusers fixes their GroupNorm epsilon at 1e-6 and has no dropout.
_ENCODER_DECODER = {"act_fn": "silu", "mid_block_add_attention": True}
_DOWN_BLOCK, _UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
_DIFFUSERS_NORM_EPS = 1e-6


def encoder_decoder_fields(
    config: Mapping[str, Any],
    *,
    source: Path | str,
    what: str,
    refusal: str,
    latent_channels: int,
    fixed: Mapping[str, Any],
) -> dict[str, Any]:
    """The :class:`~catdiff.models.vae.EncoderDecoderConfig` fields of a diffusers ``AutoencoderKL``
    or ``VQModel`` config (``what``), whose missing fields take diffusers' defaults
    (``latent_channels``: the class's own). Other block types or activations, blocks without their
    attention, or any ``fixed`` field set otherwise is refused in one line: ``refusal`` and them all."""
    unsupported = []
    if any(t != _DOWN_BLOCK for t in config.get("down_block_types", ())):
        unsupported.append(f"down_block_types {config['down_block_types']}")
    if any(t != _UP_BLOCK for t in config.get("up_block_types", ())):
        unsupported.append(f"up_block_types {config['up_block_types']}")
    for field, want in {**_ENCODER_DECODER, **fixed}.items():
        if config.get(field, want) != want:
            unsupported.append(f"{field}={config[field]!r}")
    if unsupported:
        raise UserError(f"{source}: {refusal} ({', '.join(unsupported)})")
    try:
        block_out_channels = tuple(int(c) for c in config.get("block_out_channels", (64,)))
        fields = {
            "in_channels": int(config.get("in_channels", 3)),
            "out_channels": int(config.get("out_channels", 3)),
            "latent_channels": int(config.get("latent_channels", latent_channels)),
            "block_out_channels": block_out_channels,
            "layers_per_block": int(config.get("layers_per_block", 1)),
            "norm_groups": int(config.get("norm_num_groups", 32)),
        }
    except (TypeError, ValueError) as error:
        raise UserError(f"{source}: unusable {what} config: {error}") from None
    for field in ("down_block_types", "up_block_types"):
        if field in config and len(config[field]) != len(block_out_channels):
            raise UserError(f"{source}: {len(config[field])} {field} for {len(block_out_channels)} block_out_channels")
    return fields


def encoder_decoder_to_diffusers(config: EncoderDecoderConfig, what: str) -> dict[str, Any]:
    """The diffusers config fields of our Encoder / Decoder shape (the inverse of
    :func:`encoder_decoder_fields`), for a ``what`` (``AutoencoderKL``, ``VQModel``) folder; a
    GroupNorm epsilon other than diffusers' is refused. Dropout, a training setting that diffusers'
    blocks lack, is not written."""
    if config.norm_eps != _DIFFUSERS_NORM_EPS:
        raise UserError(f"a diffusers {what} has GroupNorm eps {_DIFFUSERS_NORM_EPS}, not {config.norm_eps}")
    levels = len(config.block_out_channels)
    return {
        "_class_name": what,
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "latent_channels": config.latent_channels,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "norm_num_groups": config.norm_groups,
        "down_block_types": [_DOWN_BLOCK] * levels,
        "up_block_types": [_UP_BLOCK] * levels,
        **_ENCODER_DECODER,
    }


#: The diffusers AutoencoderKL settings of SD-1.x's VAE beyond its Encoder / Decoder shape.
_KL_FIXED = {"use_quant_conv": True, "use_post_quant_conv": True, "shift_factor": None}


def config_from_diffusers(config: Mapping[str, Any], *, source: Path | str = "config.json") -> AutoencoderKLConfig:
    """Our config from a diffusers ``AutoencoderKL`` ``config.json``; other VAE kinds are refused.

    Fields missing from the file take diffusers' own defaults, as diffusers does.
    """
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise UserError(f"{source} describes a diffusers {name}, not an AutoencoderKL")
    fields = encoder_decoder_fields(
        config,
        source=source,
        what="AutoencoderKL",
        refusal="this VAE is not SD-1.x-shaped",
        latent_channels=4,
        fixed=_KL_FIXED,
    )
    try:
        return AutoencoderKLConfig(**fields, scaling_factor=float(config.get("scaling_factor", 0.18215)))
    except (TypeError, ValueError) as error:
        raise UserError(f"{source}: unusable AutoencoderKL config: {error}") from None


def config_to_diffusers(config: AutoencoderKLConfig) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` ``config.json`` of our config (read back by :func:`config_from_diffusers`)."""
    return {
        **encoder_decoder_to_diffusers(config, "AutoencoderKL"),
        **_KL_FIXED,
        "scaling_factor": config.scaling_factor,
    }


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
    levels, layers = our_shape(state)
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
            layers_per_block=layers,
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
    name: KeyNamer = lambda k: k,
    dtype: torch.dtype = torch.float32,
) -> AutoencoderKL:
    with torch.device("meta"):
        model = AutoencoderKL(config)
    return load_state_strict(model, state, source, what="the VAE", name=name, dtype=dtype, assign=True).eval()


def diffusers_weights_file(folder: Path) -> Path:
    """The weights file of a diffusers model folder (safetensors, fp16 safetensors or the ``.bin``
    of ``save_pretrained(safe_serialization=False)``, which is read weights-only)."""
    weights = next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise UserError(f"{folder} has no weights file (expected {DIFFUSERS_WEIGHTS[0]})")
    return weights


def _load_diffusers_folder(
    folder: Path, raw: Mapping[str, Any], config: AutoencoderKLConfig | None, dtype: torch.dtype
) -> AutoencoderKL:
    weights = diffusers_weights_file(folder)
    config = config or config_from_diffusers(raw, source=folder / DIFFUSERS_CONFIG)
    return _build(config, fix_old_diffusers_attention(read_state_file(weights)), weights, dtype=dtype)


def _load_catdiff_folder(folder: Path, config: AutoencoderKLConfig | None, dtype: torch.dtype) -> AutoencoderKL:
    """A catdiff model folder (``config.json`` with ``"model": {"type": "autoencoder_kl", ...}``)."""
    fields = read_config(folder).get("model")
    fields = dict(fields) if isinstance(fields, dict) else {}
    kind = fields.pop("type", None)
    if kind != AutoencoderKL.kind:
        raise UserError(f"{folder} holds a {kind!r} model, not an AutoencoderKL")
    if config is None:
        try:
            config = AutoencoderKLConfig(**fields)
        except (TypeError, ValueError) as error:
            raise UserError(f"{folder / CONFIG_FILE}: unusable AutoencoderKL config: {error}") from None
    return _build(config, read_weights(folder), folder, dtype=dtype)


def save_vae(model: AutoencoderKL, folder: Path) -> Path:
    """Write ``model`` as a catdiff model folder, which :func:`load_vae` reads back."""
    return write_model_folder(folder, {"model": model_config(model)}, model.state_dict())


def load_vae(
    path: str | Path, *, config: AutoencoderKLConfig | None = None, dtype: torch.dtype = torch.float32
) -> AutoencoderKL:
    """An :class:`AutoencoderKL` (``dtype``, eval mode, CPU) with the weights at ``path``.

    ``path`` may be
      - a diffusers ``vae/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``),
        or a diffusers pipeline folder holding one;
      - a catdiff model folder of an ``autoencoder_kl`` (see :func:`save_vae`);
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
        raw = read_json(path / DIFFUSERS_CONFIG, what="VAE config")
        if str(raw.get("format", "")).startswith("catdiff."):
            return _load_catdiff_folder(path, config, dtype)
        return _load_diffusers_folder(path, raw, config, dtype)
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
    if not is_compvis(state):
        state = fix_old_diffusers_attention(state)
        config = config or infer_config(state, source=source)
        return _build(config, state, source, name=lambda k: prefix + k, dtype=dtype)
    shape = (len(config.block_out_channels), config.layers_per_block) if config else compvis_shape(state)
    names = compvis_file_names(state, *shape)
    clash = next((keys for keys in names.values() if len(keys) > 1), None)
    if clash:  # a file mixing layouts: two of its keys land on one of ours
        raise UserError(
            f"weights in {source} do not fit the VAE: keys {[prefix + k for k in clash]} name the same tensor"
        )
    ours = vae_state_from_compvis(state, shape=shape)
    config = config or infer_config(ours, source=source)
    to_compvis = compvis_key_namer(*shape)
    return _build(
        config, ours, source, name=lambda k: prefix + (names[k][0] if k in names else to_compvis(k)), dtype=dtype
    )
