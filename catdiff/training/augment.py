"""Non-leaking augmentation (Karras et al. 2022, "Elucidating the design space...", sec. 5 and
app. F.2): each transform is applied to a training image with probability ``p``, and its
parameters go to the network as a condition vector that is zero for the untouched image. At
sampling the vector is zero, so the network makes images as the data holds them and no
augmentation leaks into its samples, however often it was applied.

The transforms work on images and latents alike (square, NCHW): a vertical flip, a rotation by
a multiple of 90 degrees and an integer translation of up to 1/8 of the side with reflected
borders. (The horizontal flip is the data's own: a mirrored cat is a cat, so it needs no label.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

AUGMENT_DIM = 5  # the condition: vertical flip, rotation (cos - 1, sin), translation (x, y) / side
MAX_SHIFT = 0.125  # the largest translation, as a share of the side (EDM's translate_int)


def reflect(index: Tensor, size: int) -> Tensor:
    """Indices outside ``0 .. size - 1`` mirrored back in (the border pixel not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(x: Tensor, p: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``x`` with each transform applied to each image with probability ``p``, and the
    ``[N, AUGMENT_DIM]`` condition that describes what was done. Every draw is made whatever
    ``p`` is, so a step's later draws do not depend on it."""
    n, _, h, w = x.shape
    if h != w:
        raise ValueError(f"augmentation needs square images, got {h}x{w}")
    applied = torch.rand(3, n, generator=generator) < p
    quarters = torch.randint(1, 4, (n,), generator=generator) * applied[1]
    limit = max(1, round(MAX_SHIFT * h))
    shifts = torch.randint(-limit, limit + 1, (2, n), generator=generator) * applied[2]

    out = torch.where(applied[0][:, None, None, None], x.flip(-2), x)
    out = torch.stack([torch.rot90(image, int(k), dims=(-2, -1)) for image, k in zip(out, quarters, strict=True)])
    grid = torch.arange(h)
    rows = reflect(grid[None] - shifts[1][:, None], h)  # [N, H]
    cols = reflect(grid[None] - shifts[0][:, None], w)  # [N, W]
    out = out[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    angle = quarters.double() * (math.pi / 2)
    condition = torch.stack([applied[0].double(), angle.cos() - 1, angle.sin(), shifts[0] / w, shifts[1] / h], dim=1)
    return out.contiguous(), condition.round(decimals=6).to(x.dtype)


def with_augmentation(network: torch.nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights of a model trained without augmentation, for ``network`` that takes it: the
    condition's embedding starts at zero, so the network starts as the model was."""
    weight = getattr(getattr(network, "augment_embedding", None), "weight", None)
    if weight is None or "augment_embedding.weight" in state:
        return state
    return {**state, "augment_embedding.weight": torch.zeros_like(weight)}
