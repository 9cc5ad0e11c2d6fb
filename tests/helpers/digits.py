"""A digits folder (MNIST's IDX files) of random images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catdiff.data.digits import write_idx


def make_digits_folder(root: Path, n: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", (np.arange(n) % 3).astype(np.uint8))
    return root
