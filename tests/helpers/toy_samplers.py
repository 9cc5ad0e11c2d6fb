"""A deterministic toy network and start noise for sampler parity tests."""

from __future__ import annotations

import torch

from catdiff.diffusion.schedule import NoiseSchedule

T = 1000
SHAPE = (2, 3, 8, 8)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}


class ToyNet:
    """A fixed, deterministic stand-in for a trained VP network ``net(x_t, t)``.

    Its output is the ideal eps (or v) for unit-Gaussian data, ``sqrt(1 - alpha-bar_t) x_t``
    (or 0), plus a fixed random mix of ``x_t`` and its neighbours, squashed by tanh and modulated
    by ``t``, so that samples stay O(1) while every step still depends non-trivially on x and t.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(3, SHAPE[1], SHAPE[1], generator=g) * 0.5
        self.bias = torch.randn(SHAPE[1], 1, 1, generator=g) * 0.1
        self.schedule = schedule
        self.prediction = prediction

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        # fractional timesteps (Karras grids) take alpha-bar at the interpolated sigma
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_t.shape[0])
        ac = (1 / (1 + self.schedule.t_to_sigma(t) ** 2)).float().view(-1, 1, 1, 1)
        phase = (t.float() / T).view(-1, 1, 1, 1)
        # channel mixing of x_t and of its neighbours, element-wise: a conv or einsum would go
        # through multi-threaded kernels that crawl on 2 shared CPU cores
        mixed = self.bias
        for m, x in zip(self.mix, (x_t, x_t.roll(1, -1), x_t.roll(1, -2)), strict=True):
            mixed = mixed + (m[None, :, :, None, None] * x[:, None]).sum(2)
        wiggle = torch.tanh(mixed)
        wiggle = 0.3 * wiggle * torch.cos(3 * phase) + 0.05 * torch.sin(7 * phase)
        if self.prediction == "eps":
            return (1 - ac).sqrt() * x_t + wiggle
        return wiggle


def start_noise(seed: int = 123) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
