"""Discrete variance-preserving noise schedules (Ho et al. 2020; Nichol & Dhariwal 2021).

A schedule is a sequence of betas over T training steps. From it follow
``alphas_cumprod`` (written alpha-bar), the forward process
``q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I)`` and the equivalent
variance-exploding noise level ``sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t)`` that the
samplers work in (Karras et al. 2022): ``x_t / sqrt(alpha-bar_t) = x_0 + sigma_t * eps``.

One meaning per symbol: ``sigma`` is always that VE noise level. The VP sample is
``x_t = alpha_t x_0 + std_t eps`` with the signal scale ``alpha_t = sqrt(alpha-bar_t)`` and the VP
noise scale ``std_t = sqrt(1 - alpha-bar_t)``; :func:`vp_to_ve` and :func:`ve_to_vp` convert samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from torch import Tensor
from typing_extensions import TypedDict

from catdiff.errors import UserError

BetaKind = Literal["linear", "scaled_linear", "cosine"]
Spacing = Literal["leading", "trailing", "linspace"]
SigmaSpacing = Literal["leading", "trailing", "linspace", "uniform", "karras", "exponential"]
BETA_KINDS: tuple[str, ...] = ("linear", "scaled_linear", "cosine")
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
SIGMA_SPACINGS: tuple[str, ...] = (*SPACINGS, "uniform", "karras", "exponential")


class ScheduleConfig(TypedDict, total=False):
    """A schedule as files hold it (:meth:`NoiseSchedule.to_config`)."""

    kind: BetaKind
    T: int
    beta_start: float
    beta_end: float


Level = TypeVar("Level", float, Tensor)  # a noise level: a number, or a tensor of them


def alpha_bar(sigma: Level) -> Level:
    """The VP ``alpha-bar`` of a VE noise level: ``1 / (1 + sigma^2)`` (1 at sigma 0)."""
    return 1 / (1 + sigma**2)


def ve_to_vp(x: Tensor, sigma: float | Tensor) -> Tensor:
    """``x_t = sqrt(alpha-bar) * x``: the VP sample a DDPM-trained network sees."""
    return x * alpha_bar(torch.as_tensor(sigma, dtype=torch.float64)).sqrt().to(x.dtype)


def vp_to_ve(x_t: Tensor, sigma: float | Tensor) -> Tensor:
    """``x = x_t / sqrt(alpha-bar)``: the inverse of :func:`ve_to_vp`. Unit-variance noise made
    VE at the grid's first level is the samplers' start, diffusers' ``x_T`` in VP scale."""
    return x_t * (1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2).sqrt().to(x_t.dtype)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min``, uniform in ``sigma^(1/rho)``,
    and a final 0 (Karras et al. 2022, eq. 5): small steps where noise is low."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(inv_max + ramp * (inv_min - inv_max)) ** rho, torch.zeros(1, dtype=torch.float64)])


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``n`` noise levels uniform in ``log sigma`` (equal steps in log-SNR, as DPM-Solver takes
    them; Lu et al. 2022), and a final 0."""
    levels = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])


def linear_betas(T: int, beta_start: float, beta_end: float) -> Tensor:
    """Betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_start: float, beta_end: float) -> Tensor:
    """Betas whose square roots are evenly spaced: the Stable Diffusion schedule."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Betas of ``alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2)`` (Nichol & Dhariwal 2021, eq. 17)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar(t + 1) / alpha_bar(t), max_beta) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete VP schedule; all tensors are float64 on the CPU and cast on use."""

    kind: BetaKind = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    betas: Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: Tensor = field(init=False, repr=False, compare=False)
    log_sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in BETA_KINDS:
            raise UserError(f"unknown beta schedule {self.kind!r}; choose one of {', '.join(BETA_KINDS)}")
        if self.T < 2:
            raise UserError(f"a schedule needs at least 2 steps, got T={self.T}")
        if self.kind == "linear":
            betas = linear_betas(self.T, self.beta_start, self.beta_end)
        elif self.kind == "scaled_linear":
            betas = scaled_linear_betas(self.T, self.beta_start, self.beta_end)
        else:
            betas = cosine_betas(self.T)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        object.__setattr__(self, "log_sigmas", 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod))

    def to_config(self) -> ScheduleConfig:
        return {"kind": self.kind, "T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end}

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> NoiseSchedule:
        return cls(**config)

    # --- noise levels -------------------------------------------------------------------

    @property
    def sigmas(self) -> Tensor:
        """VE noise level of every training step, increasing with t."""
        return self.log_sigmas.exp()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Noise level at (possibly fractional) timestep ``t``, interpolating log-sigma linearly."""
        t = t.double().clamp(0, self.T - 1)
        low = t.floor().long()
        high = (low + 1).clamp(max=self.T - 1)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The inverse of :meth:`t_to_sigma`: a fractional timestep for each noise level."""
        log_sigma = sigma.double().clamp(min=1e-30).log().cpu()
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, self.T - 1)
        low = high - 1
        w = (log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])
        return (low + w.clamp(0, 1)).to(sigma.device)

    # --- forward process ------------------------------------------------------------------

    def vp_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, std_t) = (sqrt(alpha-bar_t), sqrt(1 - alpha-bar_t))`` for integer timesteps ``t``."""
        ac = self.alphas_cumprod.to(t.device)[t]
        return ac.sqrt(), (1 - ac).sqrt()

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` with the given standard-normal ``noise`` (Ho et al. 2020, eq. 4)."""
        alpha, std = (v.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1))) for v in self.vp_scales(t))
        return alpha * x0 + std * noise

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``alpha-bar_t / (1 - alpha-bar_t)``."""
        ac = self.alphas_cumprod.to(t.device)[t]
        return ac / (1 - ac)

    # --- sampling grids -------------------------------------------------------------------

    def timesteps(self, n: int, spacing: Spacing = "leading", offset: int = 0) -> Tensor:
        """``n`` descending integer timesteps, spaced as in diffusers' schedulers.

        "leading" takes multiples of ``T // n`` (DDIM, Song et al. 2021), "trailing" ends at
        ``T - 1`` (Lin et al. 2024, "Common diffusion noise schedules are flawed"), "linspace"
        spans ``[0, T - 1]``.
        """
        if not 1 <= n <= self.T:
            raise UserError(f"steps must be between 1 and {self.T}, got {n}")
        if spacing == "leading":
            ts = torch.arange(n, dtype=torch.float64) * (self.T // n) + offset
        elif spacing == "trailing":
            ts = torch.arange(self.T, 0, -self.T / n, dtype=torch.float64).round() - 1
        elif spacing == "linspace":
            ts = torch.linspace(0, self.T - 1, n, dtype=torch.float64).round()
        else:
            raise UserError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        return ts.sort(descending=True).values.long().clamp(0, self.T - 1)

    def discrete_sigmas(self, n: int, spacing: Spacing = "leading", offset: int = 0) -> Tensor:
        """The sigma grid of :meth:`timesteps`, descending, with a final 0 (the clean image)."""
        return torch.cat([self.sigmas[self.timesteps(n, spacing, offset)], torch.zeros(1, dtype=torch.float64)])

    def sampling_sigmas(self, n: int, spacing: SigmaSpacing = "trailing") -> Tensor:
        """A descending grid of ``n`` noise levels and a final 0, for a sampler of ``n`` steps.

        "leading", "trailing" and "linspace" take the training steps of :meth:`timesteps`
        ("uniform" is "linspace": uniform in t); "karras" and "exponential" span the schedule's
        ``[sigma_min, sigma_max]`` continuously (:func:`karras_sigmas`, :func:`exponential_sigmas`).
        """
        if spacing not in SIGMA_SPACINGS:
            raise UserError(f"unknown sigma spacing {spacing!r}; choose one of {', '.join(SIGMA_SPACINGS)}")
        if spacing == "karras":
            return karras_sigmas(n, self.sigma_min, self.sigma_max)
        if spacing == "exponential":
            return exponential_sigmas(n, self.sigma_min, self.sigma_max)
        return self.discrete_sigmas(n, "linspace" if spacing == "uniform" else spacing)
