"""Timestep embeddings shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(
    t: Tensor, dim: int, *, max_period: float = 10000.0, cos_first: bool = True, freq_shift: float = 0.0
) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [B] -> [B, dim], float32.

    The positional encoding of Vaswani et al. 2017 ("Attention Is All You Need", sec. 3.5)
    applied to the timestep, as in DDPM (Ho et al. 2020): with half = dim // 2 and
    frequencies omega_i = max_period ** (-i / (half - freq_shift)), i = 0 .. half-1, the
    embedding is [cos(t * omega) | sin(t * omega)] (``cos_first``: the layout of ADM and Stable
    Diffusion) or [sin | cos] (DDPM's released models, which also use ``freq_shift`` 1; the
    paper interleaves sin and cos, the same features in another order). An odd ``dim`` gets
    one zero column at the end.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape [B], got {tuple(t.shape)}")
    half = dim // 2
    i = torch.arange(half, device=t.device, dtype=torch.float32)
    omega = torch.exp(-math.log(max_period) * i / (half - freq_shift))
    angle = t.to(torch.float32)[:, None] * omega[None, :]
    parts = [torch.cos(angle), torch.sin(angle)]
    emb = torch.cat(parts if cos_first else parts[::-1], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
