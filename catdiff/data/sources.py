"""Which kind of data a path holds (image folder, digits folder, latent cache), and opening it
for training, encoding or splitting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catdiff.autoencoders import Autoencoder, load_autoencoder
from catdiff.data.digits import Digits, is_digits_folder, split_digits
from catdiff.data.image_folder import ImageFolder, split_folder
from catdiff.data.latent_cache import LatentCache, check_compatible, encode_folder, is_latent_cache
from catdiff.errors import UserError

DEFAULT_SIZE = 32  # training resolution of an image folder when none is given


@dataclass
class TrainingData:
    """What a run trains on, and what it records about it."""

    data: Tensor  # uint8 images or float latents, NCHW
    info: dict[str, Any]  # where the data came from: path, size, count
    mirrored: Tensor | None = None  # precomputed mirror images of the latents
    labels: Tensor | None = None  # classes, for digits
    autoencoder: dict[str, Any] | None = None  # the record of the latents' autoencoder


def open_training_data(path: Path, *, size: int | None = None, autoencoder: str | Path | None = None) -> TrainingData:
    """A digits folder (at its own size), an image folder (at ``size`` px, default 32) or a latent
    cache (refused unless made at ``size`` px and, if given, with ``autoencoder``)."""
    if is_digits_folder(path):
        digits = Digits.from_folder(path)
        info = {"path": str(path), "size": digits.size, "count": len(digits)}
        return TrainingData(digits.images, info, labels=digits.labels)
    if not is_latent_cache(path):
        dataset = ImageFolder(path, size or DEFAULT_SIZE, preload=True)
        return TrainingData(dataset.images, {"path": str(path), "size": dataset.size, "count": len(dataset)})
    cache = LatentCache.open(path)
    manifest = cache.manifest
    if autoencoder is not None:
        wanted = load_autoencoder(autoencoder).descriptor()
        check_compatible(manifest, autoencoder=wanted, size=size or manifest["size"], root=path)
    elif size is not None and size != manifest["size"]:
        raise UserError(f"latent cache {path} was made at size {manifest['size']} px, not {size} px")
    info = {"latents": str(path), **{key: manifest[key] for key in ("source", "size", "count")}}
    record = {**manifest["autoencoder"], "source": manifest["autoencoder_source"]}
    return TrainingData(cache.latents, info, cache.flipped, cache.labels, record)


def encode_data(
    path: Path,
    out: Path,
    autoencoder: Autoencoder,
    *,
    source: str,
    size: int = 128,
    flip: bool = True,
    device: str | torch.device = "cpu",
    **options: Any,
) -> int:
    """Encode a digits or image folder into the latent cache ``out`` on ``device`` (resumable; see
    :func:`~catdiff.data.latent_cache.encode_folder` for ``source`` and ``options``); returns the
    number of images. Digits keep their own 32 px and are never mirrored: a mirrored 7 is no 7."""
    digits = is_digits_folder(path)
    if digits:
        dataset: ImageFolder | Digits = Digits.from_folder(path)
    elif size % autoencoder.downsampling_factor:
        raise UserError(f"size must be a multiple of {autoencoder.downsampling_factor} for this autoencoder")
    else:
        dataset = ImageFolder(path, size)
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
    return len(dataset)


def split_data(path: Path, out: Path, *, heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Split a digits folder into two digits folders, or an image folder into ``out/train`` and
    ``out/heldout`` (links); returns both."""
    split = split_digits if is_digits_folder(path) else split_folder
    return split(path, out, heldout=heldout, seed=seed)
