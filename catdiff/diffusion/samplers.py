"""Samplers: plain functions over a descending grid of noise levels, in the style of k-diffusion.

Every sampler has the signature::

    sample_x(denoise, x, sigmas, *, generator=None, callback=None, <own options>, **cond) -> x

- ``denoise(x, sigma, **cond) -> x0`` works on the variance-exploding (VE) sample
  ``x = x0 + sigma * eps`` (Karras et al. 2022); :class:`catdiff.diffusion.denoiser.Denoiser`
  wraps a VP network into one. Extra keyword arguments (``cond``) go to ``denoise`` unchanged.
- ``sigmas`` is a 1-D descending grid of noise levels, normally ending in 0
  (:meth:`NoiseSchedule.discrete_sigmas`). Sampling runs ``len(sigmas) - 1`` steps.
- ``x`` is the start sample at ``sigmas[0]``, VE-scaled. For a VP model whose data has unit
  variance, make it as ``noise * sqrt(1 + sigmas[0] ** 2)``: that is exactly diffusers' unit-variance
  ``x_T`` in VP scale (:func:`vp_to_ve`). The sampler returns the sample at ``sigmas[-1]``, i.e. the
  clean estimate when the grid ends in 0.
- Every random draw is ``torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)``,
  one per step that adds noise, so a seeded CPU generator gives the same draws as diffusers'
  ``randn_tensor`` (a CPU generator with an accelerator ``x`` draws on the CPU and moves, as
  diffusers does).
- ``callback``, when given, is called once after every step with a :class:`StepInfo` dict:
  ``{"i", "x", "sigma", "sigma_next", "denoised"}``. ``x`` is the *new* sample, at noise level
  ``sigma_next``; ``denoised`` is the x0 estimate the step used, made at ``sigma``. The VP sample
  a diffusers scheduler would hold after the same step is ``ve_to_vp(info["x"], info["sigma_next"])``.
  Progress bars and previews hang off this callback.

The VP samplers here (DDPM, DDIM) are written with the paper's alpha-bar quantities, obtained
from a VE noise level by :func:`alpha_bar`; both share one loop (:func:`_sample_first_order`),
because in VE form each is ``x_next = x0 + c_eps * eps + c_noise * z`` and differs only in the two
coefficients. New samplers register themselves with :func:`register_sampler` and are found by
name with :func:`get_sampler`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, TypedDict

import torch
from torch import Tensor

DenoiseFn = Callable[..., Tensor]
Sampler = Callable[..., Tensor]


class StepInfo(TypedDict):
    """What a sampler's ``callback`` receives after step ``i`` (0-based)."""

    i: int
    x: Tensor  # the sample after the step, at noise level sigma_next (VE scale)
    sigma: Tensor  # the noise level the step started from; denoise saw x at this level
    sigma_next: Tensor  # the noise level of the new x
    denoised: Tensor  # the x0 estimate made at sigma


Callback = Callable[[StepInfo], Any]

SAMPLERS: dict[str, Sampler] = {}


def register_sampler(name: str) -> Callable[[Sampler], Sampler]:
    """Decorator: add a sampler function to :data:`SAMPLERS` under ``name``."""

    def add(fn: Sampler) -> Sampler:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        SAMPLERS[name] = fn
        return fn

    return add


def get_sampler(name: str) -> Sampler:
    """The sampler function registered as ``name``; a ValueError names the known ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}") from None


# --- VP <-> VE ------------------------------------------------------------------------------


def alpha_bar(sigma: float | Tensor) -> float | Tensor:
    """The VP ``alpha-bar`` of a VE noise level: ``1 / (1 + sigma^2)`` (1 at sigma 0)."""
    return 1 / (1 + sigma**2)


def ve_to_vp(x: Tensor, sigma: float | Tensor) -> Tensor:
    """``x_t = sqrt(alpha-bar) * x``: the VP sample a DDPM-trained network sees."""
    return x * alpha_bar(torch.as_tensor(sigma, dtype=torch.float64)).sqrt().to(x.dtype)


def vp_to_ve(x_t: Tensor, sigma: float | Tensor) -> Tensor:
    """``x = x_t / sqrt(alpha-bar)``: the inverse of :func:`ve_to_vp`."""
    return x_t * (1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2).sqrt().to(x_t.dtype)


# --- shared machinery -----------------------------------------------------------------------


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One standard-normal draw shaped like ``x``, as diffusers' ``randn_tensor`` makes it."""
    if generator is not None and generator.device.type != x.device.type:
        draw = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
        return draw.to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _check_sigmas(sigmas: Tensor) -> Tensor:
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 noise levels, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly descending")
    if not bool(sigmas[-2] > 0) or bool(sigmas[-1] < 0):
        raise ValueError("sigmas must be positive, except for a final 0")
    return sigmas


StepCoefficients = Callable[[float, float], tuple[float, float]]


def _sample_first_order(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    coefficients: StepCoefficients,
    generator: torch.Generator | None,
    callback: Callback | None,
    cond: dict[str, Any],
) -> Tensor:
    """The loop shared by samplers whose step is ``x_next = x0 + c_eps * eps + c_noise * z``.

    ``eps = (x - x0) / sigma`` is the noise implied by the denoiser; ``coefficients(sigma,
    sigma_next) -> (c_eps, c_noise)`` is computed in float64; ``z`` is drawn only when
    ``c_noise > 0``.
    """
    sigmas = _check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma, **cond)
        c_eps, c_noise = coefficients(float(sigma), float(sigma_next))
        eps = (x - denoised) / float(sigma)
        x = denoised + c_eps * eps
        if c_noise > 0:
            x = x + c_noise * _randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


# --- samplers -------------------------------------------------------------------------------


@register_sampler("ddpm")
@torch.no_grad()
def sample_ddpm(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    variance: Literal["beta_tilde", "beta"] = "beta_tilde",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    **cond: Any,
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
        raise ValueError(f"unknown DDPM variance {variance!r}; choose 'beta_tilde' or 'beta'")

    def coefficients(sigma: float, sigma_next: float) -> tuple[float, float]:
        if sigma_next == 0:
            return 0.0, 0.0
        a_t, a_s = alpha_bar(sigma), alpha_bar(sigma_next)
        beta = 1 - a_t / a_s
        var = (1 - a_s) / (1 - a_t) * beta if variance == "beta_tilde" else beta
        return sigma_next**2 / sigma, math.sqrt(var / a_s)

    return _sample_first_order(denoise, x, sigmas, coefficients, generator, callback, cond)


@register_sampler("ddim")
@torch.no_grad()
def sample_ddim(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    **cond: Any,
) -> Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with sigma_t(eta) of eq. 16).

    Each step from level ``t`` to the next level ``s`` of the grid is::

        x_s = sqrt(alpha-bar_s) x0 + sqrt(1 - alpha-bar_s - std^2) eps + std z,
        std = eta * sqrt((1 - alpha-bar_s) / (1 - alpha-bar_t) * (1 - alpha-bar_t / alpha-bar_s))

    ``eta = 0`` is the deterministic DDIM sampler (no draws at all); ``eta = 1`` is DDPM with the
    beta-tilde variance. In VE form the step is ``x0 + sqrt(sigma_s^2 - s_up^2) eps + s_up z`` with
    ``s_up = std / sqrt(alpha-bar_s) = eta * sigma_s * sqrt(1 - sigma_s^2 / sigma_t^2)``: the
    eta = 0 step is the Euler step of the probability-flow ODE (Karras et al. 2022, section 4).
    See the module docstring for the other arguments.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    def coefficients(sigma: float, sigma_next: float) -> tuple[float, float]:
        a_t, a_s = alpha_bar(sigma), alpha_bar(sigma_next)
        std = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        direction = math.sqrt(max(1 - a_s - std**2, 0.0))
        return direction / math.sqrt(a_s), std / math.sqrt(a_s)

    return _sample_first_order(denoise, x, sigmas, coefficients, generator, callback, cond)
