"""Standard-normal draws from per-image generators: the one random-normal helper of catdiff.

Image ``i`` of a batch owns generator ``i`` (EDM's ``generate.py`` convention: one seed per
image), so an image's start noise and every later draw of a stochastic sampler do not depend on
which other images share its batch. A draw of shape ``[B, ...]`` with ``B`` generators is the
stack of ``torch.randn(shape[1:], generator=g_i)``, which is what diffusers' ``randn_tensor``
makes from a list of generators; with one generator it is one ``torch.randn`` of the whole shape.
Generators live on the CPU, so the same seed gives the same noise on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator]


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with that image's seed."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def standard_normal(
    shape: Sequence[int],
    generator: Generators | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A draw of ``shape`` from ``generator`` (one, one per image along dim 0, or None for
    torch's global one), made where the generator lives and moved to ``device``."""
    shape = tuple(shape)
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        draw = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator])
    elif generator is not None:
        draw = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
    else:
        return torch.randn(shape, dtype=dtype, device=device)
    return draw.to(device) if device is not None else draw
