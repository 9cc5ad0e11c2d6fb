"""Solvers of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from catdiff.diffusion.noise import Generators
from catdiff.diffusion.samplers.core import Callback, DenoiseFn, check_sigmas, register_sampler
from catdiff.diffusion.samplers.vp import sample_first_order


@register_sampler("euler")
@torch.no_grad()
def sample_euler(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Generators | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``
    (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
    Algorithm 1 without stochastic churn). First order; one network evaluation per step. The step
    ``x + (sigma_next - sigma) (x - x0) / sigma`` is ``x0 + sigma_next * eps``: the same update as
    deterministic DDIM, reached from the ODE side. ``generator`` is unused (no draws).
    """
    return sample_first_order(denoise, x, sigmas, lambda sigma, sigma_next: (sigma_next, 0.0), None, callback)


@register_sampler("heun", evaluations_per_step=2)
@torch.no_grad()
def sample_heun(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Generators | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 2
    without churn): an Euler step, then the average of the slopes at both ends. Two network
    evaluations per step, except the last step to sigma 0, which is a plain Euler step.
    """
    sigmas = check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        slope = (x - denoised) / float(sigma)
        dt = float(sigma_next - sigma)
        x_euler = x + slope * dt
        if sigma_next > 0:
            slope_next = (x_euler - denoise(x_euler, sigma_next)) / float(sigma_next)
            x = x + (slope + slope_next) / 2 * dt
        else:
            x = x_euler
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x
