"""Model folders and training checkpoints on disk.

A model folder is ``config.json`` + ``model.safetensors`` (+ ``ema.safetensors``). A training
checkpoint is a model folder plus ``training_state.pt`` (optimizer, LR schedule, step, training
time, RNG), written to a temporary folder and renamed into place, so a killed run never leaves
half a checkpoint behind. Nothing here runs code on load: safetensors, or ``torch.load`` with
``weights_only=True``.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from catdiff.errors import UserError
from catdiff.io.atomic import fsync_folder, remove_stale, temporary_name, write_bytes
from catdiff.io.json_files import read_json, write_json

FORMAT = "catdiff.model/1"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def write_model_folder(
    path: Path,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``config.json`` and the weights into ``path`` (created if needed)."""
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / CONFIG_FILE, {"format": FORMAT, **config})
    write_bytes(path / MODEL_FILE, safetensors_bytes(_contiguous(model_state)))
    if ema_state is not None:
        write_bytes(path / EMA_FILE, safetensors_bytes(_contiguous(ema_state)))
    return path


def read_config(path: Path) -> dict[str, Any]:
    """The config of a model folder; a folder that is not one is a :class:`UserError`."""
    if not path.is_dir() or not (path / CONFIG_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise UserError(f"not a catdiff model folder or checkpoint: {path} (needs {CONFIG_FILE} and {MODEL_FILE})")
    return read_json(path / CONFIG_FILE, format=FORMAT, what="model folder")


def read_weights(path: Path, *, ema: bool = True) -> dict[str, torch.Tensor]:
    """The EMA weights if present and asked for, else the raw model weights."""
    file = path / EMA_FILE if ema and (path / EMA_FILE).is_file() else path / MODEL_FILE
    try:
        return load_file(file)
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise UserError(f"corrupt weights file {file}: {error}") from None


# --- training checkpoints ------------------------------------------------------------------


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_model_folder(path: Path) -> Path:
    """A model folder or checkpoint as given, or the newest checkpoint of a run folder."""
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    if (path / CONFIG_FILE).is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise UserError(f"not a catdiff run, model folder or checkpoint: {path}")
    return found[-1]


def save_checkpoint(
    run_dir: Path,
    step: int,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    training_state: dict[str, Any],
    *,
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically (temp folder + rename) and keep the newest ``keep``."""

    def fill(folder: Path) -> None:
        write_model_folder(folder, config, model_state, ema_state)
        buffer = io.BytesIO()
        torch.save(training_state, buffer)
        write_bytes(folder / TRAINING_STATE_FILE, buffer.getvalue())

    root = run_dir / CHECKPOINTS_DIR
    if root.is_dir():  # of any step, left by a run killed while saving
        remove_stale(root, f".{CHECKPOINT_PREFIX}*.tmp-*")
    final = replace_folder(root / f"{CHECKPOINT_PREFIX}{step:07d}", fill)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def replace_folder(final: Path, fill: Callable[[Path], None]) -> Path:
    """Write folder ``final`` whole or not at all: ``fill`` writes a temporary folder beside it,
    which then takes its place by renames; a ``fill`` that fails (a full disk) leaves ``final``
    as it was and no temporary behind. Temporaries left by a killed process are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, f".{final.name}.tmp-*")
    remove_stale(final.parent, f".{final.name}.old-*")
    tmp, old = temporary_name(final), final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        fill(tmp)
        fsync_folder(tmp)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    fsync_folder(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_training_state(path: Path) -> dict[str, Any]:
    file = path / TRAINING_STATE_FILE
    if not file.is_file():
        raise UserError(f"checkpoint {path} has no {TRAINING_STATE_FILE}; it cannot be resumed")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"corrupt training state {file}: {error}") from None
