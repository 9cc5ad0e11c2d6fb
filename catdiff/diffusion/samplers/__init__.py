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


# --- ODE and SDE solvers in sigma (Karras et al. 2022; Lu et al. 2022) -------------------------


@register_sampler("euler")
@torch.no_grad()
def sample_euler(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    **cond: Any,
) -> Tensor:
    """Euler's method on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``
    (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
    Algorithm 1 without stochastic churn). First order; one network evaluation per step. The step
    ``x + (sigma_next - sigma) (x - x0) / sigma`` is ``x0 + sigma_next * eps``: the same update as
    deterministic DDIM, reached from the ODE side. ``generator`` is unused (no draws).
    """
    return _sample_first_order(denoise, x, sigmas, lambda sigma, sigma_next: (sigma_next, 0.0), None, callback, cond)


@register_sampler("heun")
@torch.no_grad()
def sample_heun(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    **cond: Any,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 2
    without churn): an Euler step, then the average of the slopes at both ends. Two network
    evaluations per step, except the last step to sigma 0, which is a plain Euler step.
    """
    sigmas = _check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma, **cond)
        slope = (x - denoised) / float(sigma)
        dt = float(sigma_next - sigma)
        x_euler = x + slope * dt
        if sigma_next > 0:
            slope_next = (x_euler - denoise(x_euler, sigma_next, **cond)) / float(sigma_next)
            x = x + (slope + slope_next) / 2 * dt
        else:
            x = x_euler
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def _log_snr_step(sigma: Tensor, sigma_next: Tensor) -> float:
    """``h = lambda_next - lambda`` with the half log-SNR ``lambda = -log(sigma)`` (Lu et al. 2022)."""
    return math.log(float(sigma)) - math.log(float(sigma_next))


def _multistep_order(i: int, steps: int, order: int) -> int:
    """The order a multistep DPM-Solver++ step can use: lower while the history fills up, and on
    a short grid (fewer than 15 steps) first order on the last step and at most second order on
    the one before, as Lu et al.'s reference implementation does for stability."""
    if steps < 15 and i >= steps - 2:
        order = min(order, steps - i)
    return min(order, i + 1)


def _dpmpp_multistep(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int,
    eta: float,
    generator: torch.Generator | None,
    callback: Callback | None,
    cond: dict[str, Any],
) -> Tensor:
    """DPM-Solver++ multistep in data prediction, ODE (``eta = 0``) or SDE (``eta = 1``) form.

    One step from ``sigma`` to ``sigma_next`` with ``h = log(sigma / sigma_next)``::

        x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D
                 + sigma_next sqrt(1 - e^{-2 eta h}) z

    where ``D`` is the newest x0 estimate corrected by earlier ones (divided differences in
    lambda) to the step's order: 2 with the midpoint rule, 3 as in Lu et al.'s eq. for
    DPM-Solver++(3M). (The SDE form exists here at orders 1 and 2.)
    """
    sigmas = _check_sigmas(sigmas)
    steps = len(sigmas) - 1
    history: list[tuple[Tensor, float]] = []  # (x0 estimate, h of the step that followed it)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma, **cond)
        if sigma_next == 0:
            x = denoised
        else:
            h = _log_snr_step(sigma, sigma_next)
            k = _multistep_order(i, steps, order)
            phi = -math.expm1(-(1 + eta) * h)  # 1 - e^{-(1 + eta) h}
            x = float(sigma_next / sigma) * math.exp(-eta * h) * x + phi * denoised
            if k >= 2:
                (d1, h1) = history[-1]
                first = (denoised - d1) / (h1 / h)  # D1_0 of Lu et al., (m0 - m1) / r0
                if k == 2:
                    x = x + 0.5 * phi * first
                else:
                    (d2, h2) = history[-2]
                    r0, r1 = h1 / h, h2 / h
                    earlier = (d1 - d2) / r1
                    second = (first - earlier) / (r0 + r1)
                    first = first + r0 * second
                    e = math.expm1(-h)  # e^{-h} - 1
                    x = x + (e / h + 1) * first - ((e + h) / h**2 - 0.5) * second
            if eta > 0:
                x = x + float(sigma_next) * math.sqrt(-math.expm1(-2 * eta * h)) * _randn_like(x, generator)
            history.append((denoised, h))
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def _dpmpp_sampler(name: str, order: int, eta: float, doc: str) -> Sampler:
    """Register a DPM-Solver++ variant of :func:`_dpmpp_multistep` under ``name``."""

    @torch.no_grad()
    def sample(
        denoise: DenoiseFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        **cond: Any,
    ) -> Tensor:
        return _dpmpp_multistep(
            denoise, x, sigmas, order=order, eta=eta, generator=generator, callback=callback, cond=cond
        )

    sample.__name__ = sample.__qualname__ = f"sample_{name}"
    sample.__doc__ = doc
    return register_sampler(name)(sample)


sample_dpmpp_2m = _dpmpp_sampler(
    "dpmpp_2m",
    2,
    0.0,
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", Algorithm 2): second-order multistep in data prediction,
    one network evaluation per step. Deterministic.""",
)
sample_dpmpp_2m_sde = _dpmpp_sampler(
    "dpmpp_2m_sde",
    2,
    1.0,
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, section 5 / appendix): the second-order multistep
    solver of the reverse SDE in data prediction (midpoint rule); one draw per step.""",
)
sample_dpmpp_3m = _dpmpp_sampler(
    "dpmpp_3m",
    3,
    0.0,
    """DPM-Solver++(3M) (Lu et al. 2022): the third-order multistep ODE solver in data
    prediction, one network evaluation per step. Deterministic.""",
)
