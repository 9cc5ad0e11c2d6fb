"""Labelled digits from MNIST's IDX files (LeCun et al. 1998), and a seeded train/held-out split.

A *digits folder* holds one ``*images-idx3-ubyte[.gz]`` and one ``*labels-idx1-ubyte[.gz]``
file, as MNIST is published. IDX is big-endian: a magic number ``0x0000TTDD`` (type ``TT``,
``0x08`` = uint8; ``DD`` dimensions), the ``DD`` sizes as uint32, then the data in C order.
Digits are served as uint8 ``[N, 1, 32, 32]`` (the 28 x 28 pixels padded by 2 on each side, as
LeNet-5 sees them, so that three halvings stay whole) with int64 labels ``[N]``.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from catdiff.data.image_folder import uint8_to_float
from catdiff.errors import UserError

__all__ = ["Digits", "is_digits_folder", "split_digits"]

IMAGES_PATTERN, LABELS_PATTERN = "*images-idx3-ubyte*", "*labels-idx1-ubyte*"
IMAGES_FILE, LABELS_FILE = "images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"
PAD = 2
UINT8 = 0x08


def _one_file(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[0] if len(found) == 1 else None


def is_digits_folder(path: Path) -> bool:
    """A folder with exactly one IDX image file and one IDX label file."""
    return path.is_dir() and all(_one_file(path, p) is not None for p in (IMAGES_PATTERN, LABELS_PATTERN))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) of uint8 data as an array of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, kind, ndim = struct.unpack(">HBB", data[:4])
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        if zero != 0 or kind != UINT8 or len(data) != 4 + 4 * ndim + int(np.prod(shape)):
            raise ValueError("not a uint8 IDX file of the size its header gives")
    except (OSError, EOFError, ValueError, struct.error) as error:
        raise UserError(f"cannot read IDX file {path}: {error}") from None
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as a gzipped IDX file."""
    header = struct.pack(f">HBB{array.ndim}I", 0, UINT8, array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@dataclass
class Digits:
    """Grey digits, uint8 ``[N, 1, 32, 32]`` (black background), and their labels, int64 ``[N]``;
    item ``i`` is image ``i`` as float ``[1, 32, 32]`` in [-1, 1], as :class:`~catdiff.data.ImageFolder`
    serves its images. ``root`` is the folder they were read from."""

    images: Tensor
    labels: Tensor
    root: Path | None = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> Digits:
        folder = Path(folder)
        if not is_digits_folder(folder):
            raise UserError(f"not a digits folder: {folder} (needs one *{IMAGES_FILE} and one *{LABELS_FILE})")
        images = read_idx(_one_file(folder, IMAGES_PATTERN))
        labels = read_idx(_one_file(folder, LABELS_PATTERN))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{folder}: expected images [N, H, W] and N labels, got {images.shape} and {labels.shape}")
        padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
        return cls(torch.from_numpy(padded).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), folder)

    def files_digest(self) -> str:
        """A fingerprint of what a latent cache encodes: the digits and their labels."""
        return hashlib.sha256(self.images.numpy().tobytes() + self.labels.numpy().tobytes()).hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tensor:
        return uint8_to_float(self.images[index])

    def save(self, folder: Path) -> Path:
        """Write the (unpadded) digits as a digits folder that :meth:`from_folder` reads back."""
        folder.mkdir(parents=True, exist_ok=True)
        write_idx(folder / IMAGES_FILE, self.images[:, 0, PAD:-PAD, PAD:-PAD].numpy())
        write_idx(folder / LABELS_FILE, self.labels.numpy().astype(np.uint8))
        return folder

    def subset(self, indices: Tensor) -> Digits:
        return Digits(self.images[indices], self.labels[indices])


def split_digits(root: str | Path, out: str | Path, *, heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``out/train`` and ``out/heldout`` digits folders: ``heldout`` digits drawn by a
    permutation seeded with ``seed``, the rest kept for training, both in their original order."""
    digits, out = Digits.from_folder(root), Path(out)
    if not 0 < heldout < len(digits):
        raise UserError(f"--heldout must be between 1 and {len(digits) - 1} for {root} ({len(digits)} digits)")
    parts = (out / "train", out / "heldout")
    if any(part.exists() for part in parts):
        raise UserError(f"{out} already holds a split; choose another --out")
    chosen = torch.zeros(len(digits), dtype=torch.bool)
    chosen[torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))[:heldout]] = True
    digits.subset(~chosen).save(parts[0])
    digits.subset(chosen).save(parts[1])
    return parts
