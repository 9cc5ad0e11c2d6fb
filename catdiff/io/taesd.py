"""TAESD's weight files: the published pair (https://github.com/madebyollin/taesd, MIT) and the
copy bundled with catdiff in ``catdiff/weights/taesd/``.

A TAESD folder holds ``taesd_encoder.safetensors`` and ``taesd_decoder.safetensors``, whose keys
are the indices of :class:`~catdiff.models.taesd.TAESD`'s halves; the published files are bf16.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from catdiff.errors import UserError
from catdiff.io.atomic import write_bytes
from catdiff.io.state_dicts import load_state_strict, read_state_file
from catdiff.models.taesd import TAESD

__all__ = ["BUNDLED_WEIGHTS", "DECODER_FILE", "ENCODER_FILE", "is_taesd_folder", "load_taesd", "save_taesd"]

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
