"""Which kind of data a path holds (image folder, digits folder, latent cache), and opening it
for training, encoding or splitting.

An image folder of class subfolders (``FOLDER/tabby/*.jpg``, ``FOLDER/black/*.jpg``;
:func:`~catdiff.data.image_folder.find_classes`) is labelled data: its latent cache stores the
labels, and ``classes.json`` beside them the class names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor

from catdiff.autoencoders import Autoencoder, load_autoencoder
from catdiff.data.digits import Digits, is_digits_folder, split_digits
from catdiff.data.holdout import run_heldout, training_files
from catdiff.data.image_folder import ImageFolder, files_digest, find_classes, find_images, split_folder
from catdiff.data.latent_cache import (
    MANIFEST_FILE,
    STATS_FILE,
    LatentCache,
    check_compatible,
    encode_folder,
    is_latent_cache,
)
from catdiff.errors import UserError
from catdiff.io.json_files import read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_SIZE = 32  # training resolution of an image folder in pixel space when none is given
LATENT_SIZE = 128  # training resolution of an image folder in latent space, for images at least this large
SMALLEST_LATENT_SIZE = 64  # nor below this: smaller images are upscaled to it
SIZE_PROBES = 200  # images whose size judges a folder's
MIN_IMAGES = 8  # the fewest images a run trains on
CLASSES_FILE = "classes.json"  # the class names of a labelled latent cache
CLASSES_FORMAT = "catdiff.classes/1"

DataKind = Literal["digits", "latents", "images"]


def data_kind(path: Path) -> DataKind:
    """What ``path`` holds: a digits folder, a latent cache, or (anything else) an image folder."""
    if is_digits_folder(path):
        return "digits"
    return "latents" if is_latent_cache(path) else "images"


def folder_classes(path: Path) -> list[str] | None:
    """The class names of an image folder of class subfolders (judged from the file names, before
    any file is read), or None."""
    return find_classes(path, find_images(path)) if path.is_dir() else None


def latent_size(folder: Path) -> int:
    """The size an image folder trains at in latents: the median shorter side of (up to
    :data:`SIZE_PROBES` of) its images, rounded down to a multiple of 32 and kept between
    :data:`SMALLEST_LATENT_SIZE` and :data:`LATENT_SIZE`, so images are not upscaled past their
    own resolution (a 64 px face trains at 64, a 200 px photo at 128). Read from file headers."""
    paths = find_images(folder) if folder.is_dir() else []
    sides = []
    for path in paths[:: max(1, len(paths) // SIZE_PROBES)]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # PIL raises many kinds for a bad file; it is skipped when read
            continue
    if not sides:
        return LATENT_SIZE  # opening the folder will say what is wrong with it
    median = sorted(sides)[len(sides) // 2]
    return max(SMALLEST_LATENT_SIZE, min(LATENT_SIZE, median // 32 * 32))


def check_count(where: Path | str, count: int, *, batch: int = 1) -> None:
    """Refuse to train on fewer than :data:`MIN_IMAGES` images or on less than one ``batch``."""
    if count < MIN_IMAGES:
        raise UserError(f"{where} holds {count} images; training needs at least {MIN_IMAGES}")
    if count < batch:
        raise UserError(
            f"{where} holds {count} images, fewer than one batch of {batch}; lower --batch-size or add images"
        )


def read_classes(cache: Path) -> list[str] | None:
    """The class names stored with a latent cache, or None."""
    file = cache / CLASSES_FILE
    return read_json(file, format=CLASSES_FORMAT, what="class list")["classes"] if file.is_file() else None


@dataclass
class TrainingData:
    """What a run trains on, and what it records about it."""

    data: Tensor  # uint8 images or float latents, NCHW
    info: dict[str, Any]  # where the data came from: path, size, count
    mirrored: Tensor | None = None  # precomputed mirror images of the latents
    labels: Tensor | None = None  # classes, for digits and folders of class subfolders
    autoencoder: dict[str, Any] | None = None  # the record of the latents' autoencoder


def open_training_data(
    path: Path, *, size: int | None = None, autoencoder: str | Path | None = None, class_subfolders: bool = True
) -> TrainingData:
    """A digits folder (at its own size), an image folder of pixels (at ``size`` px, default 32;
    labelled by its class subfolders if it has them and ``class_subfolders``) or a latent cache
    (refused unless made at ``size`` px and, if given, with ``autoencoder``). ``info["classes"]``
    holds the class names of labelled data that has names."""
    if is_digits_folder(path):
        digits = Digits.from_folder(path)
        info = {"path": str(path), "size": digits.size, "count": len(digits)}
        return TrainingData(digits.images, info, labels=digits.labels)
    if not is_latent_cache(path):
        dataset = ImageFolder(path, size or DEFAULT_SIZE, preload=True, class_subfolders=class_subfolders)
        info = {"path": str(path), "size": dataset.size, "count": len(dataset)}
        if dataset.classes is not None:
            info["classes"] = dataset.classes
        return TrainingData(dataset.images, info, labels=dataset.labels)
    cache = LatentCache.open(path)
    manifest = cache.manifest
    if autoencoder is not None:
        wanted = load_autoencoder(autoencoder).descriptor()
        check_compatible(manifest, autoencoder=wanted, size=size or manifest["size"], root=path)
    elif size is not None and size != manifest["size"]:
        raise UserError(f"latent cache {path} was made at size {manifest['size']} px, not {size} px")
    info = {"latents": str(path), **{key: manifest[key] for key in ("source", "size", "count")}}
    classes = read_classes(path)
    if classes is not None and cache.labels is not None:
        info["classes"] = classes
    record = {**manifest["autoencoder"], "source": manifest["autoencoder_source"]}
    return TrainingData(cache.latents, info, cache.flipped, cache.labels, record)


def heldout_files(folder: Path, run_dir: Path) -> list[str]:
    """The held-out files of a run on an image folder (:func:`~catdiff.data.holdout.run_heldout`)."""
    return run_heldout(folder, run_dir) if folder.is_dir() else []  # opening the folder says what is wrong


def latent_training_data(
    folder: Path,
    cache: Path,
    *,
    size: int = LATENT_SIZE,
    autoencoder: str = "taesd",
    class_subfolders: bool = True,
    batch: int = 1,
    device: str | torch.device = "cpu",
    heldout: list[str] | tuple[str, ...] = (),
) -> TrainingData:
    """An image folder as latents of ``autoencoder`` at ``size`` px, encoded into the cache folder
    ``cache`` first (with mirror images). The encoding resumes where a killed one stopped, and a
    complete cache of the same files, size and autoencoder is used as it is, so a resumed or
    repeated run encodes nothing again. Fewer than :data:`MIN_IMAGES` images, or than one
    ``batch``, are refused before any encoding. The ``heldout`` files (relative to ``folder``) are
    left out of the cache."""
    folder = folder.resolve()  # the cache records its source; the same folder by any path is the same
    model = load_autoencoder(autoencoder)
    if size % model.downsampling_factor:
        raise UserError(
            f"size must be a multiple of {model.downsampling_factor} px to train in {autoencoder} latents, got {size}"
        )
    if _complete_cache_of(folder, cache, model.descriptor(), size, class_subfolders, heldout):
        log.info("using the %s latents of %s in %s", autoencoder, folder, cache)
    else:
        encode_data(
            folder,
            cache,
            model,
            source=autoencoder,
            size=size,
            device=device,
            class_subfolders=class_subfolders,
            training_batch=batch,
            exclude=heldout,
            progress=None,
        )
    return open_training_data(cache, size=size)


def _complete_cache_of(
    folder: Path,
    cache: Path,
    autoencoder: dict[str, Any],
    size: int,
    class_subfolders: bool,
    heldout: list[str] | tuple[str, ...] = (),
) -> bool:
    """Whether ``cache`` is finished and holds every image file of ``folder`` but the ``heldout``
    ones (judged from names alone, so reading no image), encoded at ``size`` px by ``autoencoder``."""
    if not (cache / STATS_FILE).is_file() or not (cache / MANIFEST_FILE).is_file():
        return False
    manifest = read_json(cache / MANIFEST_FILE, what="latent cache")
    labelled = class_subfolders and folder_classes(folder) is not None
    return (
        manifest.get("source") == str(folder)
        and manifest.get("files") == files_digest(folder, training_files(folder, heldout))
        and manifest.get("size") == size
        and manifest.get("autoencoder") == autoencoder
        and ("num_classes" in manifest) == labelled
    )


def encode_data(
    path: Path,
    out: Path,
    autoencoder: Autoencoder,
    *,
    source: str,
    size: int = 128,
    flip: bool = True,
    device: str | torch.device = "cpu",
    class_subfolders: bool = True,
    training_batch: int | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    **options: Any,
) -> int:
    """Encode a digits or image folder into the latent cache ``out`` on ``device`` (resumable; see
    :func:`~catdiff.data.latent_cache.encode_folder` for ``source`` and ``options``); returns the
    number of images. Digits keep their own 32 px and are never mirrored: a mirrored 7 is no 7.
    A folder of class subfolders is stored labelled, with its class names, if ``class_subfolders``.
    With ``training_batch``, a folder too small to train on in such batches is refused first
    (:func:`check_count`). The ``exclude`` files of an image folder (relative to it) are left out."""
    digits = is_digits_folder(path)
    if digits:
        dataset: ImageFolder | Digits = Digits.from_folder(path)
    elif size % autoencoder.downsampling_factor:
        raise UserError(f"size must be a multiple of {autoencoder.downsampling_factor} for this autoencoder")
    else:
        dataset = ImageFolder(path, size, class_subfolders=class_subfolders)
        if exclude:
            leave_out(dataset, exclude)
    if training_batch is not None:
        check_count(path, len(dataset), batch=training_batch)
    log.info("encoding %d images of %s at %d px into %s", len(dataset), path, dataset.size, out)
    classes = getattr(dataset, "classes", None)
    if classes is not None and not is_latent_cache(out):  # a new cache: named before its first shard
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CLASSES_FILE, {"format": CLASSES_FORMAT, "classes": classes})
    autoencoder.to(device)
    encode_folder(
        dataset,
        lambda images: autoencoder.encode(images.to(device)).cpu(),
        out,
        autoencoder=autoencoder.descriptor(),
        source=source,
        flip=flip and not digits,
        **options,
    )
    if classes is not None:  # the cache is of these files, so of these classes
        write_json(out / CLASSES_FILE, {"format": CLASSES_FORMAT, "classes": classes})
    return len(dataset)


def leave_out(dataset: ImageFolder, names: list[str] | tuple[str, ...]) -> None:
    """Drop the files ``names`` (relative to the folder) from an image folder not yet loaded, and their labels."""
    dropped = set(names)
    keep = [p.relative_to(dataset.root).as_posix() not in dropped for p in dataset.paths]
    dataset.paths = [p for p, kept in zip(dataset.paths, keep, strict=True) if kept]
    if dataset.labels is not None:
        dataset.labels = dataset.labels[torch.tensor(keep, dtype=torch.bool)]


def split_data(path: Path, out: Path, *, heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Split a digits folder into two digits folders, or an image folder into ``out/train`` and
    ``out/heldout`` (links); returns both."""
    split = split_digits if is_digits_folder(path) else split_folder
    return split(path, out, heldout=heldout, seed=seed)
