"""The latent cache: a folder of images encoded once, so no autoencoder runs while training.

A cache folder holds ``cache.json`` (what was encoded, with which autoencoder, at which size),
``shard-NNNNN.safetensors`` files (``latents`` and, optionally, ``flipped``: the latents of the
horizontally mirrored images, and ``labels``: the class of each image of labelled data) and,
once complete, ``stats.json`` (per-channel mean and std). Each file is written to a temporary
file and renamed, so a killed run resumes by encoding only the shards that are missing, and its
result equals an uninterrupted run. The manifest records each shard's SHA-256 once it is
written: a shard that is missing or damaged is encoded again. A shard whose record a kill cut
off (between the shard's rename and the manifest's) is whole, since shards are renamed into
place: it is recorded if it reads back with the images it should hold.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from catdiff.errors import UserError
from catdiff.io.atomic import remove_stale, write_bytes
from catdiff.io.json_files import read_json, write_json

log = logging.getLogger(__name__)

FORMAT = "catdiff.latents/1"
MANIFEST_FILE = "cache.json"
STATS_FILE = "stats.json"

Encoder = Callable[[Tensor], Tensor]


class ImageDataset(Protocol):
    """What a cache encodes (:class:`~catdiff.data.image_folder.ImageFolder`, :class:`~catdiff.data.digits.Digits`):
    item ``i`` is image ``i`` in [-1, 1]; ``labels`` are int64 ``[N]``, or None for unlabelled images."""

    root: Path | None
    size: int
    labels: Tensor | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Tensor: ...

    def files_digest(self) -> str: ...


def shard_path(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.safetensors"


def shard_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sound_shard(root: Path, manifest: dict[str, Any], index: int) -> bool:
    """Whether shard ``index`` is there and is the file the manifest recorded (one it has no
    record of: whether it reads back with the number of images it should hold)."""
    path, recorded = shard_path(root, index), manifest.get("shards", {}).get(str(index))
    if not path.is_file():
        return False
    if recorded is not None:
        return shard_digest(path) == recorded
    try:
        return len(load_file(path)["latents"]) == len(_shard_range(manifest, index))
    except Exception:  # safetensors' own errors for a file that is not one
        return False


def is_latent_cache(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def _read_manifest(root: Path) -> dict[str, Any]:
    return read_json(root / MANIFEST_FILE, format=FORMAT, what="latent cache")


def check_compatible(manifest: dict[str, Any], *, autoencoder: dict[str, Any], size: int, root: Path) -> None:
    """Refuse a cache made with another autoencoder or at another size."""
    if manifest["autoencoder"] != autoencoder:
        raise UserError(f"latent cache {root} was made with autoencoder {manifest['autoencoder']}, not {autoencoder}")
    if manifest["size"] != size:
        raise UserError(f"latent cache {root} was made at size {manifest['size']} px, not {size} px")


@torch.inference_mode()
def encode_folder(
    dataset: ImageDataset,
    encode: Encoder,
    out: Path,
    *,
    autoencoder: dict[str, Any],
    source: str,
    flip: bool = True,
    shard_size: int = 1024,
    batch_size: int = 32,
    progress: bool | None = None,
) -> Path:
    """Encode every image of ``dataset`` (and its mirror image) into a cache at ``out``; its
    labels, if any, are stored beside their latents.

    ``autoencoder`` identifies the weights (see ``Autoencoder.descriptor``); ``source`` says
    where to load them again for decoding.
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, ".*.tmp-*")  # what a killed run was writing
    manifest = {
        "format": FORMAT,
        "autoencoder": autoencoder,
        "autoencoder_source": source,
        "size": dataset.size,
        "source": str(dataset.root),
        "files": dataset.files_digest(),
        "count": len(dataset),
        "flip": flip,
        "shard_size": shard_size,
        "num_shards": -(-len(dataset) // shard_size),
    }
    labels = dataset.labels
    if labels is not None:
        manifest["num_classes"] = int(labels.max()) + 1
    if is_latent_cache(out):
        existing = _read_manifest(out)
        check_compatible(existing, autoencoder=autoencoder, size=dataset.size, root=out)
        if {k: existing.get(k) for k in manifest if k != "autoencoder_source"} != {
            k: v for k, v in manifest.items() if k != "autoencoder_source"
        }:
            raise UserError(f"latent cache {out} was made from other files or options; choose another --out")
        manifest["shards"] = existing.get("shards", {})
    else:
        manifest["shards"] = {}
        write_json(out / MANIFEST_FILE, manifest)
    todo = [i for i in range(manifest["num_shards"]) if not sound_shard(out, manifest, i)]
    damaged = [i for i in todo if shard_path(out, i).is_file()]
    if damaged:
        log.info("%s: shards %s are damaged; encoding them again", out, ", ".join(map(str, damaged)))
    unrecorded = [i for i in range(manifest["num_shards"]) if i not in todo and str(i) not in manifest["shards"]]
    if unrecorded:
        manifest["shards"].update({str(i): shard_digest(shard_path(out, i)) for i in unrecorded})
        write_json(out / MANIFEST_FILE, manifest)
    if len(todo) < manifest["num_shards"]:
        log.info("%s: %d of %d shards already encoded", out, manifest["num_shards"] - len(todo), manifest["num_shards"])
    with tqdm(
        total=len(dataset), disable=None if progress is None else not progress, desc="encoding", unit="img"
    ) as bar:
        before = len(dataset) - sum(len(_shard_range(manifest, i)) for i in todo)
        bar.update(before)
        began, done = time.perf_counter(), 0
        for index in todo:
            tensors: dict[str, list[Tensor]] = {"latents": [], "flipped": []}
            indices = _shard_range(manifest, index)
            for start in range(0, len(indices), batch_size):
                images = torch.stack([dataset[i] for i in indices[start : start + batch_size]])
                tensors["latents"].append(encode(images).float())
                if flip:
                    tensors["flipped"].append(encode(images.flip(-1)).float())
                bar.update(len(images))
            shard = {name: torch.cat(parts) for name, parts in tensors.items() if parts}
            if labels is not None:
                shard["labels"] = labels[indices.start : indices.stop]
            data = safetensors_bytes(shard)
            write_bytes(shard_path(out, index), data)
            manifest["shards"][str(index)] = hashlib.sha256(data).hexdigest()
            write_json(out / MANIFEST_FILE, manifest)
            done += len(indices)
            if bar.disable:  # no bar (stderr is no terminal): a plain line per shard
                rate = done / (time.perf_counter() - began)
                mirrored = " (each with its mirror image)" if flip else ""
                log.info("encoded %d of %d images, %.1f images/s%s", before + done, len(dataset), rate, mirrored)
    cache = LatentCache.open(out, require_stats=False)
    stats = {"mean": cache.latents.mean(dim=(0, 2, 3)).tolist(), "std": cache.latents.std(dim=(0, 2, 3)).tolist()}
    write_json(out / STATS_FILE, stats)
    return out


def _shard_range(manifest: dict[str, Any], index: int) -> range:
    start = index * manifest["shard_size"]
    return range(start, min(manifest["count"], start + manifest["shard_size"]))


@dataclass
class LatentCache:
    """A complete cache loaded into memory (``labels``: int64 ``[N]`` for labelled images)."""

    root: Path
    manifest: dict[str, Any]
    latents: Tensor
    flipped: Tensor | None
    labels: Tensor | None = None

    @classmethod
    def open(cls, root: Path, *, require_stats: bool = True) -> LatentCache:
        manifest = _read_manifest(root)
        missing = [i for i in range(manifest["num_shards"]) if not shard_path(root, i).is_file()]
        if missing or (require_stats and not (root / STATS_FILE).is_file()):
            raise UserError(f"latent cache {root} is incomplete; run `catdiff encode` again to finish it")
        damaged = [i for i in range(manifest["num_shards"]) if not sound_shard(root, manifest, i)]
        if damaged:
            raise UserError(
                f"latent cache {root}: shard {damaged[0]} is damaged (its checksum differs from cache.json's);"
                " run `catdiff encode` (or `catdiff train` on the image folder) again to encode it again"
            )
        shards = [load_file(shard_path(root, i)) for i in range(manifest["num_shards"])]
        latents = torch.cat([s["latents"] for s in shards])
        flipped = torch.cat([s["flipped"] for s in shards]) if manifest["flip"] else None
        labels = torch.cat([s["labels"] for s in shards]) if "num_classes" in manifest else None
        return cls(root, manifest, latents, flipped, labels)

    @property
    def stats(self) -> dict[str, list[float]]:
        return read_json(self.root / STATS_FILE, what="latent statistics")
