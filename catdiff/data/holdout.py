"""The images a ``catdiff train`` run holds out of training, to measure memorisation against.

The choice is made from the file names alone (before any image is read), by a seeded
permutation of the sorted relative paths, so the same files on any machine; it is recorded in
the run folder (``heldout.json``) and read back by ``--resume`` and re-runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from catdiff.data.image_folder import find_images, read_image
from catdiff.io.json_files import read_json, write_json

HELDOUT_FILE = "heldout.json"  # in the run folder
HELDOUT_FORMAT = "catdiff.heldout/1"
SHARE = 0.05  # of the images held out
MIN_FOLDER = 100  # a smaller folder holds none out
LARGE_FOLDER, LARGE_MIN = 1000, 50  # a folder this large holds at least this many out


def heldout_count(count: int, share: float = SHARE) -> int:
    """How many of ``count`` images are held out: ``share`` of them, at least 50 of 1,000 or more,
    none of fewer than 100."""
    if count < MIN_FOLDER:
        return 0
    return max(round(share * count), LARGE_MIN if count >= LARGE_FOLDER else 1)


def choose_heldout(folder: Path, *, share: float = SHARE, seed: int = 0) -> list[str]:
    """The held-out files of ``folder``, relative to it (posix), in sorted order."""
    names = [p.relative_to(folder).as_posix() for p in find_images(folder)]
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(names[i] for i in order[: heldout_count(len(names), share)])


def run_heldout(folder: Path, run_dir: Path, *, share: float = SHARE, seed: int = 0) -> list[str]:
    """The held-out files of a run on ``folder``: those recorded in ``run_dir`` for this folder,
    else a new choice, recorded there."""
    folder, file = folder.resolve(), run_dir / HELDOUT_FILE
    if file.is_file():
        record = read_json(file, format=HELDOUT_FORMAT, what="held-out list")
        if record["folder"] == str(folder):
            return record["files"]
    files = choose_heldout(folder, share=share, seed=seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(file, {"format": HELDOUT_FORMAT, "folder": str(folder), "share": share, "seed": seed, "files": files})
    return files


def training_files(folder: Path, heldout: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The image files of ``folder`` that are not held out, sorted."""
    left_out = set(heldout)
    return [p for p in find_images(folder) if p.relative_to(folder).as_posix() not in left_out]


def read_files(paths: list[Path], size: int, *, at_most: int | None = None) -> Tensor:
    """uint8 NCHW images of ``paths`` at ``size`` px (at most ``at_most``, evenly spaced); unreadable ones skipped."""
    if at_most is not None:
        paths = paths[:: max(1, -(-len(paths) // at_most))]
    images = []
    for path in paths:
        try:
            images.append(torch.from_numpy(read_image(path, size)).permute(2, 0, 1))
        except Exception:  # PIL raises many kinds for a bad file; ImageFolder skips them too
            continue
    return torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
