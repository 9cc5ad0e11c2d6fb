"""Argument types and output checks shared by the sub-commands."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from catdiff.diffusion.samplers import SAMPLERS
from catdiff.diffusion.schedule import SIGMA_SPACINGS
from catdiff.errors import UserError

DATA_HELP = "folder of images (searched recursively), or digits folder (MNIST IDX files)"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def device(text: str) -> str:
    """A torch device that this machine has: ``cpu``, ``cuda``, ``cuda:1``, ..."""
    try:
        found = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a device such as cpu or cuda, got {text!r}") from None
    if found.type == "cuda" and (found.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text} is not available on this machine")
    return text


def add_device_option(p: argparse.ArgumentParser, what: str = "run the network on") -> None:
    p.add_argument(
        "--device",
        type=device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help=f"device to {what} (default: cuda if available, else cpu)",
    )


def add_sampler_options(p: argparse.ArgumentParser, default: str = "default: the model's") -> None:
    """``--steps --sampler --spacing``, each None unless given."""
    p.add_argument("--steps", type=positive_int, help=f"sampler steps ({default})")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help=default)
    p.add_argument("--spacing", choices=SIGMA_SPACINGS, help=f"noise levels of the steps ({default})")


def check_writable(path: Path) -> None:
    """Fail before any work if the file ``path`` cannot be written (by trying: root ignores permission bits)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent}")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as error:
        raise UserError(f"output folder is not writable: {parent} ({error.strerror})") from None


def make_writable_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) if missing, and fail if files cannot be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create output folder {folder} ({error.strerror})") from None
    check_writable(folder / "image.png")
