"""Image folders as datasets of float CHW tensors in [-1, 1].

``ImageFolder`` scans a folder (recursively), reads every image once at construction to
find the files that cannot be read, and serves square, centre-cropped RGB images. With
``preload=True`` that single pass also keeps the resized pixels, as one uint8 tensor
``[N, 3, S, S]`` (8,303 cat faces at 64 px are 100 MB), so a trainer can index whole
batches without touching the disk again.

A folder of class subfolders (``FOLDER/tabby/*.jpg``, ``FOLDER/black/*.jpg``: torchvision's
ImageFolder layout) can be read as labelled data, ``class_subfolders=True``: see
:func:`find_classes`.

The dataset never flips or otherwise randomises an image: augmentation belongs to the
trainer, which draws it from its own generator so that a resumed run is exact. It may use
``random_hflip`` for that.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from catdiff.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "files_digest",
    "find_classes",
    "find_images",
    "open_rgb",
    "random_hflip",
    "read_image",
    "uint8_to_float",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_SHOW_AT_MOST = 5  # skipped file names listed in the warning


def read_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read one image file as uint8 RGB pixels ``[size, size, 3]``.

    ``open_rgb``, then resized so the shorter side is ``size`` (bicubic, antialiased;
    small images are upscaled, a 1x1 image becomes a flat square) and centre-cropped
    to a square. Raises whatever PIL raises for a file it cannot read.
    """
    img = ImageOps.fit(open_rgb(path, size), (size, size), method=Image.Resampling.BICUBIC)
    return np.array(img, dtype=np.uint8)  # writable, for torch.from_numpy


def open_rgb(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Open and fully decode an image file as an upright 8-bit RGB PIL image.

    The whole file is decoded here, so a truncated or corrupt file raises now, not later
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off). With ``size``, a JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale where that still covers ``size`` x ``size``: much
    faster for large photos. The EXIF orientation is applied; see ``_to_rgb`` for modes.
    """
    with Image.open(path) as img:
        if size is not None:
            img.draft(img.mode, (size, size))
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block is no reason to drop the pixels
            pass
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    Transparency (RGBA, LA, PA, a palette or RGB image with a transparent colour) is
    composited onto white rather than dropped: the colour under fully transparent pixels
    is often garbage, and a cut-out on white is what a person sees in a viewer.
    16- and 32-bit grey images ("I;16", "I", "F") are scaled to 8 bits, not clipped.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and pixels.max() > 255):
            pixels = pixels / 257.0  # 0..65535 -> 0..255
        elif img.mode == "F" and pixels.max() <= 1.0:
            pixels = pixels * 255.0  # float images are usually 0..1
        img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (any shape)."""
    return images.to(torch.float32) / 127.5 - 1.0


def random_hflip(batch: torch.Tensor, generator: torch.Generator, mirrored: torch.Tensor | None = None) -> torch.Tensor:
    """Flip each image of an ``[N, C, H, W]`` batch left-right with probability 1/2.

    The coin flips come from ``generator`` only (one ``torch.rand`` of N draws on the
    generator's device), so the same generator state gives the same flips. ``mirrored``
    supplies precomputed mirror images (e.g. the latents of flipped pictures, which are not
    the flipped latents). Works for any dtype; returns a new tensor.
    """
    if batch.ndim != 4:
        raise ValueError(f"random_hflip wants an [N, C, H, W] batch, got shape {tuple(batch.shape)}")
    flip = torch.rand(batch.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(batch.device).view(-1, 1, 1, 1)
    return torch.where(flip, batch.flip(-1) if mirrored is None else mirrored, batch)


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, extensions case-insensitive), sorted.

    Hidden files and folders (name starting with ".", e.g. macOS "._x.jpg" or ".git")
    are left out. Symlinked folders are not followed.
    """
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def find_classes(root: Path, paths: list[Path]) -> list[str] | None:
    """The class names of a folder of class subfolders, sorted, or None for any other layout.

    The layout is torchvision's ImageFolder: every image of ``paths`` lies inside a subfolder of
    ``root`` (at any depth below it), and at least two subfolders hold images; the class of an
    image is the name of its subfolder. One image directly in ``root`` makes the folder unlabelled.
    """
    tops = [p.relative_to(root).parts for p in paths]
    if not tops or any(len(parts) < 2 for parts in tops):
        return None
    names = sorted({parts[0] for parts in tops})
    return names if len(names) >= 2 else None


def files_digest(root: Path, paths: list[Path]) -> str:
    """A fingerprint of a list of files: their names relative to ``root``, in order."""
    names = "\n".join(p.relative_to(root).as_posix() for p in paths)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def _hwc(images: torch.Tensor) -> np.ndarray:
    """A numpy [N, H, W, C] view of a uint8 [N, C, H, W] tensor, to write PIL pixels into.

    (numpy copies them single-threaded; torch's own strided copy of one small image
    starts its thread pool, which is 100x slower on a busy machine.)
    """
    return images.numpy().transpose(0, 2, 3, 1)


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use, not the machine's
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ImageFolder(torch.utils.data.Dataset):
    """The readable images of a folder, each a float tensor ``[3, size, size]`` in [-1, 1].

    Args:
        root: folder to scan recursively for .jpg/.jpeg/.png/.webp/.bmp files.
        size: side of the square images served (shorter side resized, centre crop).
        preload: keep every resized image in memory (``self.images``, uint8 [N, 3, S, S]),
            read in the same pass that checks the files.
        num_workers: threads that read files (PIL decodes and resizes without the GIL);
            0 reads in the calling thread. Default: up to 8, one per CPU core.
        class_subfolders: label the images by their subfolder when the folder has the class
            subfolder layout (:func:`find_classes`); other folders stay unlabelled.

    Attributes:
        paths: the readable files, sorted; item ``i`` is ``paths[i]``.
        skipped: the files that could not be read (corrupt, truncated, not an image).
        images: uint8 tensor [N, 3, size, size] once preloaded (see ``load_all``), else None.
        classes: the class names (sorted subfolder names) of a labelled folder, else None.
        labels: int64 [N], the index in ``classes`` of each image of a labelled folder; else
            None (a plain image folder is unlabelled).

    Raises ``UserError`` when ``root`` is missing, is not a folder, holds no image files,
    or holds none that can be read. Unreadable files are logged in one warning.
    """

    labels: torch.Tensor | None = None
    classes: list[str] | None = None

    def __init__(
        self,
        root: str | os.PathLike,
        size: int,
        *,
        preload: bool = False,
        num_workers: int | None = None,
        class_subfolders: bool = False,
    ) -> None:
        self.root = Path(root)
        self.size = int(size)
        if self.size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if not self.root.exists():
            raise UserError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise UserError(f"not a folder: {self.root} (give the folder that holds the images)")
        candidates = find_images(self.root)
        if not candidates:
            raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {self.root}")

        self.paths: list[Path] = []
        self.skipped: list[Path] = []
        self.images: torch.Tensor | None = None
        # One pass: reading an image is the check that it can be read. Without preload
        # the check stops after the decode and conversion (the resize is most of the cost).
        read = self._read if preload else self._check
        pixels = torch.empty(len(candidates), 3, size, size, dtype=torch.uint8) if preload else None
        hwc = _hwc(pixels) if preload else None
        for path, result in zip(candidates, self._map(read, candidates, num_workers), strict=True):
            if isinstance(result, Exception):
                self.skipped.append(path)
                log.debug("cannot read %s: %r", path, result)
                continue
            if hwc is not None:
                hwc[len(self.paths)] = result
            self.paths.append(path)
        if pixels is not None:
            self.images = pixels[: len(self.paths)]

        if self.skipped:
            names = ", ".join(p.relative_to(self.root).as_posix() for p in self.skipped[:_SHOW_AT_MOST])
            if len(self.skipped) > _SHOW_AT_MOST:
                names += f" and {len(self.skipped) - _SHOW_AT_MOST} more"
            log.warning(
                "%s: skipped %d of %d files that could not be read: %s",
                self.root,
                len(self.skipped),
                len(candidates),
                names,
            )
        if not self.paths:
            raise UserError(f"none of the {len(candidates)} image files in {self.root} could be read")
        if class_subfolders:
            self.classes = find_classes(self.root, self.paths)
        if self.classes is not None:
            index = {name: i for i, name in enumerate(self.classes)}
            labels = [index[p.relative_to(self.root).parts[0]] for p in self.paths]
            self.labels = torch.tensor(labels, dtype=torch.long)

    def _read(self, path: Path) -> np.ndarray:
        return read_image(path, self.size)

    def _check(self, path: Path) -> None:
        open_rgb(path, self.size)

    def _map(self, fn, paths: list[Path], num_workers: int | None) -> Iterator:
        """``fn`` over ``paths`` in order, on a thread pool, with a progress bar on a
        terminal. A file ``fn`` fails on yields the exception instead of a result:
        PIL raises many kinds for bad files, and all of them mean "skip it"."""
        if num_workers is None:
            num_workers = min(8, _cpu_count())

        def call(path: Path):
            try:
                return fn(path)
            except Exception as e:
                return e

        bar = dict(total=len(paths), desc=f"reading {self.root.name}", unit="img", disable=None, leave=False)
        if num_workers == 0:
            yield from tqdm(map(call, paths), **bar)
            return
        with ThreadPoolExecutor(num_workers) as pool:
            yield from tqdm(pool.map(call, paths), **bar)

    def load_all(self, num_workers: int | None = None) -> torch.Tensor:
        """All images as one uint8 tensor ``[N, 3, size, size]``, kept in ``self.images``.

        Free when the dataset was built with ``preload=True``; otherwise this reads every
        file once more (and ``__getitem__`` serves from memory afterwards).
        """
        if self.images is None:
            images = torch.empty(len(self.paths), 3, self.size, self.size, dtype=torch.uint8)
            hwc = _hwc(images)
            for i, result in enumerate(self._map(self._read, self.paths, num_workers)):
                if isinstance(result, Exception):
                    raise UserError(f"cannot read {self.paths[i]} any more (was it changed?): {result}")
                hwc[i] = result
            self.images = images
        return self.images

    def files_digest(self) -> str:
        """A fingerprint of what a latent cache encodes: the file names relative to the folder, in order."""
        return files_digest(self.root, self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.images is not None:
            return uint8_to_float(self.images[index])
        pixels = read_image(self.paths[index], self.size).transpose(2, 0, 1)
        return uint8_to_float(torch.from_numpy(np.ascontiguousarray(pixels)))

    def __repr__(self) -> str:
        return (
            f"ImageFolder({str(self.root)!r}, size={self.size}, images={len(self)}, "
            f"skipped={len(self.skipped)}, preloaded={self.images is not None}"
            + (f", classes={self.classes})" if self.classes else ")")
        )


def split_folder(root: str | os.PathLike, out: str | os.PathLike, *, heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Split an image folder into ``out/train`` and ``out/heldout`` folders of symbolic links.

    ``heldout`` images, drawn by a seeded permutation of the sorted relative paths (so the same
    files on any machine), go to ``heldout``; the rest to ``train``. The images are not copied
    or changed. Held-out images are what memorisation checks compare samples against.
    """
    root, out = Path(root).resolve(), Path(out)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    paths = find_images(root)
    if not 0 < heldout < len(paths):
        raise UserError(f"--heldout must be between 1 and {len(paths) - 1} for {root} ({len(paths)} images)")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = set(order[:heldout])
    parts = (out / "train", out / "heldout")
    if any(part.exists() for part in parts):
        raise UserError(f"{out} already holds a split; choose another --out")
    for i, path in enumerate(paths):
        link = parts[i in chosen] / path.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return parts
