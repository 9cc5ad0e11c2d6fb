"""Small synthetic image folders for tests that must not depend on ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, n: int = 32, size: int = 16, seed: int = 0) -> Path:
    """``n`` PNGs of a bright disc on a dark background at random places and colours."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        radius = rng.uniform(size * 0.15, size * 0.35)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2)[..., None]
        colour = rng.integers(128, 256, 3)
        image = np.where(disc, colour, rng.integers(0, 40, 3)).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{i:03d}.png")
    return root
