"""diffusers' autoencoder folders, read into catdiff's autoencoders and written from them.

A diffusers model folder is ``config.json``, whose ``_class_name`` names the class, and
``diffusion_pytorch_model.safetensors`` (or the ``.bin`` of ``save_pretrained(safe_serialization=False)``,
read weights-only). Three classes are read and written, each as the catdiff module of the same
network:

- ``AutoencoderKL``: :class:`~catdiff.models.vae.AutoencoderKL`, under the same names (configs
  translated by :mod:`catdiff.io.vae`);
- ``AutoencoderTiny``: :class:`~catdiff.models.taesd.TAESD`, SD-1.x's TAESD only, its layers renamed
  by rule (:mod:`catdiff.io.taesd`);
- ``VQModel``: :class:`~catdiff.models.vq.VQAutoencoder`, under the same names, group norm only
  (configs translated here). Folders of old diffusers versions (``CompVis/ldm-celebahq-256``'s
  config is of 0.1.2) may name the attention ``query``/``key``/``value``/``proj_attn``, which is
  read as for AutoencoderKL.

Anything else a folder's config asks for is refused in one line naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from catdiff.errors import UserError
from catdiff.io.atomic import write_bytes
from catdiff.io.json_files import read_json, write_json
from catdiff.io.state_dicts import load_state_strict, read_state_file
from catdiff.io.taesd import (
    AUTOENCODER_TINY_CONFIG,
    as_autoencoder_tiny,
    check_autoencoder_tiny_config,
    load_autoencoder_tiny_state,
)
from catdiff.io.vae import (
    DIFFUSERS_CONFIG,
    DIFFUSERS_VERSION,
    DIFFUSERS_WEIGHTS,
    config_to_diffusers,
    diffusers_weights_file,
    encoder_decoder_fields,
    encoder_decoder_to_diffusers,
    load_vae,
)
from catdiff.io.vae_keys import fix_old_diffusers_attention
from catdiff.models.taesd import TAESD
from catdiff.models.vae import AutoencoderKL
from catdiff.models.vq import VQAutoencoder, VQAutoencoderConfig

if TYPE_CHECKING:
    from catdiff.autoencoders import Autoencoder

__all__ = [
    "diffusers_class",
    "load_diffusers_autoencoder",
    "save_diffusers_autoencoder",
    "vq_config_from_diffusers",
    "vq_config_to_diffusers",
    "write_diffusers_folder",
]

AutoencoderModule = TAESD | AutoencoderKL | VQAutoencoder
#: The VQModel settings that catdiff's :class:`VQAutoencoder` builds beyond its Encoder / Decoder shape.
_VQ_FIXED = {"norm_type": "group"}


def diffusers_class(path: Path) -> str | None:
    """The ``_class_name`` in ``path/config.json`` when ``path`` is a diffusers model folder, else None
    (a file, a catdiff folder, a TAESD folder)."""
    if not (path / DIFFUSERS_CONFIG).is_file():
        return None
    name = read_json(path / DIFFUSERS_CONFIG, what="model config").get("_class_name")
    return None if name is None else str(name)


# --- VQModel configs ------------------------------------------------------------------------


def vq_config_from_diffusers(config: Mapping[str, Any], *, source: Path) -> VQAutoencoderConfig:
    """Our config from a diffusers ``VQModel`` ``config.json``; fields left out take diffusers'
    defaults, as diffusers does (``scaling_factor`` 0.18215 among them)."""
    fields = encoder_decoder_fields(
        config,
        source=source,
        what="VQModel",
        refusal="catdiff builds only group-norm VQModels of DownEncoderBlock2D / UpDecoderBlock2D",
        latent_channels=3,
        fixed=_VQ_FIXED,
    )
    embed_dim = config.get("vq_embed_dim")
    try:
        return VQAutoencoderConfig(
            **fields,
            num_vq_embeddings=int(config.get("num_vq_embeddings", 256)),
            vq_embed_dim=None if embed_dim is None else int(embed_dim),
            scaling_factor=float(config.get("scaling_factor", 0.18215)),
        )
    except (TypeError, ValueError) as error:
        raise UserError(f"{source}: unusable VQModel config: {error}") from None


def vq_config_to_diffusers(config: VQAutoencoderConfig) -> dict[str, Any]:
    """The diffusers ``VQModel`` ``config.json`` of our config (read back by :func:`vq_config_from_diffusers`)."""
    return {
        **encoder_decoder_to_diffusers(config, "VQModel"),
        **_VQ_FIXED,
        "num_vq_embeddings": config.num_vq_embeddings,
        "vq_embed_dim": config.vq_embed_dim,
        "scaling_factor": config.scaling_factor,
    }


# --- reading --------------------------------------------------------------------------------


def _autoencoder_tiny(folder: Path, config: Mapping[str, Any]) -> TAESD:
    check_autoencoder_tiny_config(config, folder / DIFFUSERS_CONFIG)
    weights = diffusers_weights_file(folder)
    with torch.device("meta"):
        model = TAESD()
    return load_autoencoder_tiny_state(model, read_state_file(weights), weights).eval()


def _vq_model(folder: Path, config: Mapping[str, Any]) -> VQAutoencoder:
    ours = vq_config_from_diffusers(config, source=folder / DIFFUSERS_CONFIG)
    weights = diffusers_weights_file(folder)
    state = fix_old_diffusers_attention(read_state_file(weights))
    with torch.device("meta"):
        model = VQAutoencoder(ours)
    return load_state_strict(model, state, weights, what="the VQ autoencoder", dtype=torch.float32, assign=True).eval()


_READERS: dict[str, Callable[[Path, Mapping[str, Any]], AutoencoderModule]] = {
    "AutoencoderKL": lambda folder, _: load_vae(folder),
    "AutoencoderTiny": _autoencoder_tiny,
    "VQModel": _vq_model,
}


def load_diffusers_autoencoder(folder: Path) -> AutoencoderModule:
    """The catdiff module (float32, eval mode, CPU) of a diffusers ``AutoencoderKL``,
    ``AutoencoderTiny`` or ``VQModel`` folder; any other class is a :class:`UserError`."""
    config = read_json(folder / DIFFUSERS_CONFIG, what="diffusers model config")
    name = config.get("_class_name")
    if name not in _READERS:
        raise UserError(f"{folder} holds a diffusers {name}; catdiff reads {', '.join(_READERS)} folders")
    return _READERS[name](folder, config)


# --- writing --------------------------------------------------------------------------------


def _autoencoder_tiny_form(model: TAESD) -> tuple[dict[str, Any], nn.Module]:
    config = {"_class_name": "AutoencoderTiny", "_diffusers_version": DIFFUSERS_VERSION, **AUTOENCODER_TINY_CONFIG}
    return config, as_autoencoder_tiny(model)


_FORMS: dict[str, Callable[[Any], tuple[dict[str, Any], nn.Module]]] = {
    TAESD.kind: _autoencoder_tiny_form,
    AutoencoderKL.kind: lambda model: (config_to_diffusers(model.config), model),
    VQAutoencoder.kind: lambda model: (vq_config_to_diffusers(model.config), model),
}


def write_diffusers_folder(model: AutoencoderModule, folder: Path) -> Path:
    """Write ``model`` as the diffusers folder of its class (``config.json`` and
    ``diffusion_pytorch_model.safetensors``, in the module's dtype), which diffusers'
    ``from_pretrained`` and :func:`load_diffusers_autoencoder` read back."""
    config, named = _FORMS[model.kind](model)
    state: dict[str, Tensor] = {k: v.detach().cpu().contiguous() for k, v in named.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / DIFFUSERS_CONFIG, config)
    write_bytes(folder / DIFFUSERS_WEIGHTS[0], safetensors_bytes(state))
    return folder


def save_diffusers_autoencoder(autoencoder: Autoencoder, folder: Path) -> Path:
    """Write ``autoencoder`` as a diffusers folder: TAESD as an ``AutoencoderTiny``, the others as
    the class of the same name (:func:`write_diffusers_folder`)."""
    return write_diffusers_folder(autoencoder.module, folder)
