"""Conversions at the library's edge: float NCHW in [-1, 1] <-> PIL images and grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from catdiff.errors import UserError
from catdiff.io.atomic import atomic_file

#: The image types written by extension (Pillow's names).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}  # fmt: skip


def image_format(path: Path) -> str:
    """The Pillow format of an image file named ``path``; an unknown extension is a :class:`UserError`."""
    found = IMAGE_FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise UserError(
            f"{path}: unknown image type {Path(path).suffix or '(no extension)'}; name it .png, .jpg or .webp"
        )
    return found


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` atomically (:func:`~catdiff.io.atomic.atomic_file`): a failed write leaves
    any file that was there as it was. The extension gives the format."""
    path = Path(path)
    with atomic_file(path) as tmp:
        image.save(tmp, format=image_format(path))
    return path


def to_uint8(images: Tensor) -> Tensor:
    """Float NCHW in [-1, 1] -> uint8 NHWC in [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def to_pil(images: Tensor) -> list[Image.Image]:
    """Float NCHW in [-1, 1] -> a list of RGB (or L) PIL images."""
    arrays = to_uint8(images).numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def from_pil(image: Image.Image) -> Tensor:
    """An RGB PIL image -> float CHW in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """Tile a batch into one image, ``nrow`` per row (square-ish by default)."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=torch.uint8)
    for i, image in enumerate(to_uint8(images)):
        y, x = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[y : y + h, x : x + w] = image
    array = grid.numpy()
    return Image.fromarray(array[..., 0] if c == 1 else array)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a grid image (atomically), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(make_grid(images, nrow), path)
