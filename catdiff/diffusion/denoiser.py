"""The one wrapper that turns a VP noise-prediction network into a k-diffusion denoiser.

Samplers work on ``x = x_0 + sigma * eps`` and call ``denoise(x, sigma) -> x0``
(Karras et al. 2022, section 3). A network trained on the discrete VP process sees
``x_t = x / sqrt(1 + sigma^2)`` at the fractional timestep ``t(sigma)`` of its schedule.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from catdiff.diffusion.objective import Prediction, predicted_x0
from catdiff.diffusion.schedule import NoiseSchedule


class Network(Protocol):
    def __call__(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor: ...


DenoiseFn = Callable[..., Tensor]


def dynamic_threshold(x0: Tensor, percentile: float, limit: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): clip each sample at the
    ``percentile`` of its absolute values (at least ``limit``), then rescale into the limit.

    Static clipping at high noise pins the wild x0 estimates to the range's corners, which
    shows as saturated colours; this keeps the hues.
    """
    s = x0.abs().flatten(1).float().quantile(percentile, dim=1).clamp(min=limit).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) * (limit / s)


class Denoiser:
    """``denoise(x, sigma, **cond) -> x0`` for a network with a given prediction target.

    ``clip_x0`` keeps x0 estimates within ``[-clip_x0, clip_x0]``: by clamping, or by
    :func:`dynamic_threshold` at ``dynamic_percentile`` when that is given.
    """

    def __init__(
        self,
        network: Network,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        *,
        clip_x0: float | None = None,
        dynamic_percentile: float | None = None,
    ) -> None:
        self.network = network
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.dynamic_percentile = dynamic_percentile

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        c_in = (1 + sigma**2).rsqrt()
        t = self.schedule.sigma_to_t(sigma).to(torch.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha = c_in.view(shape).to(x.dtype)
        x_t = x * alpha
        output = self.network(x_t, t, **cond).to(x.dtype)
        x0 = predicted_x0(self.prediction, output, x_t, alpha, (sigma * c_in).view(shape).to(x.dtype))
        if self.clip_x0 is not None and self.dynamic_percentile is not None:
            x0 = dynamic_threshold(x0, self.dynamic_percentile, self.clip_x0)
        elif self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0
