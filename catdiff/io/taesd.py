"""TAESD's weight files: the published pair (https://github.com/madebyollin/taesd, MIT), the
copy bundled with catdiff in ``catdiff/weights/taesd/``, and the names and config of diffusers'
``AutoencoderTiny``, which :mod:`catdiff.io.diffusers_autoencoders` reads and writes.

A TAESD folder holds ``taesd_encoder.safetensors`` and ``taesd_decoder.safetensors``, whose keys
are the indices of :class:`~catdiff.models.taesd.TAESD`'s halves; the published files are bf16.

diffusers' ``EncoderTiny`` / ``DecoderTiny`` hold the same layers, in the same order, in an
``nn.Sequential`` named ``layers``; only the decoder's leading soft clamp, which ``DecoderTiny``
applies in its ``forward`` instead, is not one of them. So our ``encoder.{i}`` is their
``encoder.layers.{i}`` and our ``decoder.{i}`` their ``decoder.layers.{i - 1}``
(:func:`as_autoencoder_tiny` names our layers so).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from catdiff.errors import UserError
from catdiff.io.atomic import write_bytes
from catdiff.io.state_dicts import load_state_strict, read_state_file
from catdiff.models.taesd import TAESD

__all__ = [
    "AUTOENCODER_TINY_CONFIG",
    "BUNDLED_WEIGHTS",
    "DECODER_FILE",
    "ENCODER_FILE",
    "as_autoencoder_tiny",
    "check_autoencoder_tiny_config",
    "is_taesd_folder",
    "load_autoencoder_tiny_state",
    "load_taesd",
    "save_taesd",
]

BUNDLED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "taesd"
ENCODER_FILE = "taesd_encoder.safetensors"
DECODER_FILE = "taesd_decoder.safetensors"
LICENSE_FILE = "LICENSE"


def _halves(model: TAESD) -> tuple[tuple[nn.Module, str], ...]:
    return (model.encoder, ENCODER_FILE), (model.decoder, DECODER_FILE)


def is_taesd_folder(path: Path) -> bool:
    return (path / ENCODER_FILE).is_file()


def load_taesd(path: str | Path | None = None) -> TAESD:
    """TAESD in float32, in eval mode, on the CPU, from a folder holding its two files (by default
    the bundled copy). A missing file, or one that does not hold TAESD's weights, is a
    :class:`UserError` naming it."""
    folder = BUNDLED_WEIGHTS if path is None else Path(path)
    with torch.device("meta"):
        model = TAESD()
    for module, name in _halves(model):
        file = folder / name
        if not file.is_file():
            raise UserError(
                f"TAESD weights not found: {file} (get {name} from https://github.com/madebyollin/taesd, "
                "or leave the path out to use the copy bundled with catdiff)"
            )
        load_state_strict(module, read_state_file(file), file, what="TAESD", dtype=torch.float32, assign=True)
    return model.eval()


def save_taesd(model: TAESD, folder: Path) -> Path:
    """Write ``model`` as a TAESD folder that :func:`load_taesd` reads back, with TAESD's license.
    Weights are stored in bf16, as published, when that loses nothing (always, for weights read
    from such files), else in float32."""
    folder.mkdir(parents=True, exist_ok=True)
    for module, name in _halves(model):
        state = {k: v.detach().cpu().float().contiguous() for k, v in module.state_dict().items()}
        bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
        lossless = all(torch.equal(bf16[k].float(), v) for k, v in state.items())
        write_bytes(folder / name, safetensors_bytes(bf16 if lossless else state))
    shutil.copyfile(BUNDLED_WEIGHTS / LICENSE_FILE, folder / LICENSE_FILE)
    return folder


# --- diffusers' AutoencoderTiny -------------------------------------------------------------

#: The AutoencoderTiny config fields that shape TAESD's network or its latents, with TAESD's
#: values, which are also diffusers' defaults; every other value of them is refused.
AUTOENCODER_TINY_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": TAESD.latent_channels,
    "encoder_block_out_channels": [64, 64, 64, 64],
    "decoder_block_out_channels": [64, 64, 64, 64],
    "num_encoder_blocks": [1, 3, 3, 3],
    "num_decoder_blocks": [3, 3, 3, 1],
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "upsampling_scaling_factor": 2,
    "scaling_factor": 1.0,  # TAESD's latents are SD-scaled already
    "shift_factor": 0.0,
}
#: Leading layers of each TAESD half that diffusers applies in ``forward`` rather than holding them.
_FORWARD_ONLY = {"encoder": 0, "decoder": 1}


def check_autoencoder_tiny_config(config: Mapping[str, Any], source: Path) -> None:
    """Refuse, in one line naming every such field, an AutoencoderTiny config that is not TAESD's
    (:data:`AUTOENCODER_TINY_CONFIG`; a field left out takes diffusers' default, which is)."""
    wrong = []
    for field, want in AUTOENCODER_TINY_CONFIG.items():
        value = config.get(field, want)
        if (list(value) if isinstance(value, (list, tuple)) else value) != want:
            wrong.append(f"{field}={value!r}")
    if wrong:
        raise UserError(f"{source}: catdiff reads only SD-1.x's TAESD as an AutoencoderTiny, not {', '.join(wrong)}")


def as_autoencoder_tiny(model: TAESD) -> nn.Module:
    """``model``'s layers (the same modules and parameters) under diffusers' AutoencoderTiny names:
    each half's layers, less those of :data:`_FORWARD_ONLY`, as ``{encoder,decoder}.layers``. Its
    ``state_dict`` is an AutoencoderTiny's; loading one into it loads ``model``."""
    view = nn.Module()
    for part, skip in _FORWARD_ONLY.items():
        half = nn.Module()
        half.layers = nn.Sequential(*list(getattr(model, part))[skip:])
        view.add_module(part, half)
    return view


def load_autoencoder_tiny_state(model: TAESD, state: Mapping[str, Tensor], source: Path) -> TAESD:
    """Load an AutoencoderTiny state dict into ``model`` (float32, strictly: a misfit is one
    :class:`UserError` naming the keys as diffusers does)."""
    load_state_strict(as_autoencoder_tiny(model), state, source, what="TAESD", dtype=torch.float32, assign=True)
    return model
