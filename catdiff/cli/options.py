"""Argument types and output checks shared by the sub-commands."""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def bounded(kind: type[int] | type[float], low: float, high: float, *, above_low: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` from ``low`` to ``high`` (above ``low`` with ``above_low``)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not (low < value if above_low else low <= value) or not value <= high:
            interval = f"in ({low}, {high}]" if above_low else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {interval}, got {value}")
        return value

    return parse


probability = bounded(float, 0, 1)
#: Seeds are those of ``torch.Generator.manual_seed``: whole numbers from 0 to 2**63 - 1.
MAX_SEED = 2**63 - 1
seed = bounded(int, 0, MAX_SEED)
SEED_HELP = f"0 to {MAX_SEED}"


_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d*)?)h)?(?:(?P<m>\d+(?:\.\d*)?)m)?(?:(?P<s>\d+(?:\.\d*)?)s)?")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """A length of time as seconds: ``90s``, ``30m``, ``2h``, ``1h30m``, ``1.5h`` (hours, minutes,
    seconds, each at most once and in that order; a unit is required). It must be more than zero."""
    spelled = text.strip().lower()
    if spelled.startswith("-") or re.fullmatch(r"0*(\.0*)?", spelled) and spelled:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    if re.fullmatch(r"\d+(\.\d*)?", spelled):
        raise argparse.ArgumentTypeError(f"give a unit: {spelled}s, {spelled}m or {spelled}h, not {text!r}")
    match = _DURATION.fullmatch(spelled)
    if not spelled or match is None or not any(match.groupdict().values()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 2h or 1h30m, got {text!r}")
    seconds = sum(float(value) * _SECONDS[unit] for unit, value in match.groupdict().items() if value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    return seconds


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def name_list(text: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]``, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


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


def check_image_output(path: Path) -> None:
    """Fail before any work unless ``path`` names an image file that can be written: not a
    folder, with an extension Pillow saves (``.png``, ``.jpg``, ``.webp``, ...)."""
    from catdiff.images import image_format

    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give an image file, e.g. {path / 'images.png'}")
    image_format(path)
    check_writable(path)


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
