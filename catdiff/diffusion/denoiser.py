"""One preconditioning object for sampling and training: a VP network as a denoiser and as a loss.

Samplers work on ``x = x_0 + sigma * eps`` and call ``denoise(x, sigma) -> x0`` (Karras et al. 2022,
section 3). A network trained on the discrete VP process sees ``x_t = x / sqrt(1 + sigma^2)`` at
the fractional timestep ``t(sigma)`` of its schedule, and is trained on ``x_t = alpha_t x_0 + std_t eps``
at integer timesteps. As in EDM's ``EDMPrecond`` and k-diffusion's ``DiscreteEpsDDPMDenoiser``,
one object holds both directions, so eps, v and x0 (:mod:`catdiff.diffusion.objective`) are
interpreted in one place.

The network sees its input in its own dtype and its output comes back in the sampler's, so a
sampler that carries ``x`` in float64 (another library's, or ours on a float64 start) drives a
float32 network. Under ``torch.autocast`` the input takes the parameters' dtype and autocast
lowers the operations as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from catdiff.diffusion.objective import Prediction, min_snr_weight, predicted_x0, training_target
from catdiff.diffusion.schedule import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> eps, v or x0; a condition is bound in


def dynamic_threshold(x0: Tensor, percentile: float, limit: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): clip each sample at the
    ``percentile`` of its absolute values (at least ``limit``), then rescale into the limit.

    Static clipping at high noise pins the wild x0 estimates to the range's corners, which
    shows as saturated colours; this keeps the hues.
    """
    s = x0.abs().flatten(1).float().quantile(percentile, dim=1).clamp(min=limit).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) * (limit / s)


def network_dtype(network: Network) -> torch.dtype | None:
    """The dtype a network takes its input in: a module's first floating parameter's, or the
    ``dtype`` a guided network declares (:mod:`catdiff.diffusion.conditioning`'s wrappers); None
    for a plain function, which gets its input as it is."""
    if isinstance(network, nn.Module):
        return next((p.dtype for p in network.parameters() if p.is_floating_point()), None)
    dtype = getattr(network, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _per_sample(values: Tensor, ndim: int) -> Tensor:
    return values.view(-1, *([1] * (ndim - 1)))


class Denoiser:
    """``denoise(x, sigma) -> x0`` and ``loss(x0, t, noise)`` for a network with a given prediction target.

    ``x`` may be in any float dtype: the network gets ``x_t`` in :func:`network_dtype` (and its
    timesteps in float32), and x0 is computed in ``x``'s dtype. ``clip_x0`` keeps x0 estimates
    within ``[-clip_x0, clip_x0]``: by clamping, or by :func:`dynamic_threshold` at
    ``dynamic_percentile`` when that is given.
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

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return self.predict(x, sigma)[0]

    def predict(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """The x0 estimate as :meth:`__call__` gives it (clipped, if the denoiser clips) and the
        network's own estimate before any clipping, from one network evaluation."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        c_in = (1 + sigma**2).rsqrt()  # alpha_t of the VP sample at this level
        t = self.schedule.sigma_to_t(sigma).to(torch.float32)
        alpha = _per_sample(c_in, x.ndim).to(x.dtype)
        x_t = x * alpha
        output = self.network(x_t.to(network_dtype(self.network) or x.dtype), t).to(x.dtype)
        raw = predicted_x0(self.prediction, output, x_t, alpha, _per_sample(sigma * c_in, x.ndim).to(x.dtype))
        x0 = raw
        if self.clip_x0 is not None and self.dynamic_percentile is not None:
            x0 = dynamic_threshold(raw, self.dynamic_percentile, self.clip_x0)
        elif self.clip_x0 is not None:
            x0 = raw.clamp(-self.clip_x0, self.clip_x0)
        return x0, raw

    def loss(self, x0: Tensor, t: Tensor, noise: Tensor, *, min_snr_gamma: float | None = None) -> Tensor:
        """Denoising score matching at integer timesteps ``t`` (Ho et al. 2020, eq. 14): the mean
        squared error of the output against its target, weighted by min-SNR-gamma if given
        (Hang et al. 2023)."""
        alpha, std = (_per_sample(v.float(), x0.ndim) for v in self.schedule.vp_scales(t))
        x_t = alpha * x0 + std * noise
        target = training_target(self.prediction, x0, noise, alpha, std)
        output = self.network(x_t, t.float()).float()
        per_sample = (output - target).pow(2).mean(dim=tuple(range(1, x0.ndim)))
        if min_snr_gamma is not None:
            per_sample = per_sample * min_snr_weight(self.prediction, self.schedule.snr(t), min_snr_gamma).float()
        return per_sample.mean()
