"""DPM-Solver++ multistep solvers in data prediction (Lu et al. 2022), ODE and SDE forms."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from catdiff.diffusion.noise import Generators
from catdiff.diffusion.samplers.core import Callback, DenoiseFn, Sampler, check_sigmas, draw_like, register_sampler


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
    generator: Generators | None,
    callback: Callback | None,
) -> Tensor:
    """DPM-Solver++ multistep in data prediction, ODE (``eta = 0``) or SDE (``eta = 1``) form.

    One step from ``sigma`` to ``sigma_next`` with ``h = log(sigma / sigma_next)``::

        x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D
                 + sigma_next sqrt(1 - e^{-2 eta h}) z

    where ``D`` is the newest x0 estimate corrected by earlier ones (divided differences in
    lambda) to the step's order: 2 with the midpoint rule, 3 as in Lu et al.'s eq. for
    DPM-Solver++(3M). (The SDE form exists here at orders 1 and 2.)
    """
    sigmas = check_sigmas(sigmas)
    steps = len(sigmas) - 1
    history: list[tuple[Tensor, float]] = []  # (x0 estimate, h of the step that followed it)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
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
                x = x + float(sigma_next) * math.sqrt(-math.expm1(-2 * eta * h)) * draw_like(x, generator)
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
        generator: Generators | None = None,
        callback: Callback | None = None,
    ) -> Tensor:
        return _dpmpp_multistep(denoise, x, sigmas, order=order, eta=eta, generator=generator, callback=callback)

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
