"""The VP samplers DDPM and DDIM, written with the paper's alpha-bar quantities.

Both share one loop (:func:`sample_first_order`): in VE form each step is
``x_next = x0 + c_eps * eps + c_noise * z`` and the two differ only in the coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from catdiff.diffusion.noise import Generators
from catdiff.diffusion.samplers.core import Callback, DenoiseFn, check_sigmas, draw_like, register_sampler
from catdiff.diffusion.schedule import alpha_bar
from catdiff.errors import UserError

StepCoefficients = Callable[[float, float], tuple[float, float]]


def sample_first_order(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    coefficients: StepCoefficients,
    generator: Generators | None,
    callback: Callback | None,
    *,
    network_eps: bool = False,
) -> Tensor:
    """The loop shared by samplers whose step is ``x_next = x0 + c_eps * eps + c_noise * z``.

    ``eps = (x - x0) / sigma`` is the noise implied by the denoiser's x0, or with
    ``network_eps`` by the network's own estimate before clipping (which needs a denoiser with
    ``predict``, :class:`~catdiff.diffusion.denoiser.Denoiser`); ``coefficients(sigma,
    sigma_next) -> (c_eps, c_noise)`` is computed in float64; ``z`` is drawn only when
    ``c_noise > 0``.
    """
    sigmas = check_sigmas(sigmas)
    predict = getattr(denoise, "predict", None)
    if network_eps and predict is None:
        raise UserError("the network's own noise estimate needs a catdiff Denoiser (one with predict)")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, raw = predict(x, sigma) if network_eps and predict is not None else (denoise(x, sigma),) * 2
        c_eps, c_noise = coefficients(float(sigma), float(sigma_next))
        eps = (x - raw) / float(sigma)
        x = denoised + c_eps * eps
        if c_noise > 0:
            x = x + c_noise * draw_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


@register_sampler("ddpm")
@torch.no_grad()
def sample_ddpm(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    variance: Literal["beta_tilde", "beta"] = "beta_tilde",
    generator: Generators | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling of DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 2).

    Each step from level ``t`` to the next level ``s`` of the grid draws from the Gaussian posterior
    ``q(x_s | x_t, x0)`` with the denoiser's x0 (Ho et al., eq. 6-7), generalised to a strided grid::

        beta       = 1 - alpha-bar_t / alpha-bar_s
        mean       = sqrt(alpha-bar_s) beta / (1 - alpha-bar_t) * x0
                     + sqrt(1 - beta) (1 - alpha-bar_s) / (1 - alpha-bar_t) * x_t
        variance   = beta_tilde = (1 - alpha-bar_s) / (1 - alpha-bar_t) * beta   ("beta_tilde")
                  or beta                                                     ("beta")

    In VE form the mean is ``x0 + (sigma_s^2 / sigma_t) * eps`` and the noise scale is
    ``sqrt(variance / alpha-bar_s)``. As in Algorithm 2, no noise is added on the step to sigma 0.
    ``variance`` picks Ho et al.'s two choices of sigma_t^2 (section 3.2); they are diffusers'
    ``"fixed_small"`` and ``"fixed_large"``. See the module docstring for the other arguments.
    """
    if variance not in ("beta_tilde", "beta"):
        raise UserError(f"unknown DDPM variance {variance!r}; choose 'beta_tilde' or 'beta'")

    def coefficients(sigma: float, sigma_next: float) -> tuple[float, float]:
        if sigma_next == 0:
            return 0.0, 0.0
        a_t, a_s = alpha_bar(sigma), alpha_bar(sigma_next)
        beta = 1 - a_t / a_s
        var = (1 - a_s) / (1 - a_t) * beta if variance == "beta_tilde" else beta
        return sigma_next**2 / sigma, math.sqrt(var / a_s)

    return sample_first_order(denoise, x, sigmas, coefficients, generator, callback)


@register_sampler("ddim")
@torch.no_grad()
def sample_ddim(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    eps: Literal["x0", "network"] = "x0",
    generator: Generators | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with sigma_t(eta) of eq. 16).

    Each step from level ``t`` to the next level ``s`` of the grid is::

        x_s = sqrt(alpha-bar_s) x0 + sqrt(1 - alpha-bar_s - std^2) eps + std z,
        std = eta * sqrt((1 - alpha-bar_s) / (1 - alpha-bar_t) * (1 - alpha-bar_t / alpha-bar_s))

    ``eta = 0`` is the deterministic DDIM sampler (no draws at all); ``eta = 1`` is DDPM with the
    beta-tilde variance. In VE form the step is ``x0 + sqrt(sigma_s^2 - s_up^2) eps + s_up z`` with
    ``s_up = std / sqrt(alpha-bar_s) = eta * sigma_s * sqrt(1 - sigma_s^2 / sigma_t^2)``: the
    eta = 0 step is the Euler step of the probability-flow ODE (Karras et al. 2022, section 4).
    ``eps`` is the noise of the step: "x0", the noise of the (clipped) x0 estimate; "network",
    the network's own estimate, which differs only where a denoiser clips x0 (diffusers' DDIM by
    default, ``use_clipped_model_output=False``). See the module docstring for the other arguments.
    """
    if eta < 0:
        raise UserError(f"eta must be >= 0, got {eta}")
    if eps not in ("x0", "network"):
        raise UserError(f"DDIM eps must be 'x0' or 'network', got {eps!r}")

    def coefficients(sigma: float, sigma_next: float) -> tuple[float, float]:
        a_t, a_s = alpha_bar(sigma), alpha_bar(sigma_next)
        std = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        direction = math.sqrt(max(1 - a_s - std**2, 0.0))
        return direction / math.sqrt(a_s), std / math.sqrt(a_s)

    return sample_first_order(denoise, x, sigmas, coefficients, generator, callback, network_eps=eps == "network")
