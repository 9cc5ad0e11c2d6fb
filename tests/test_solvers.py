"""The ODE/SDE solvers: parity with diffusers' Euler, Heun and DPM-Solver++ schedulers, sigma
grids, and convergence at the solver's order on Gaussian data, whose probability-flow ODE has a
closed-form solution."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from helpers.toy_samplers import DIFFUSERS_PREDICTION, T, ToyNet, start_noise

from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.samplers import SAMPLERS, get_sampler
from catdiff.diffusion.schedule import NoiseSchedule, exponential_sigmas, karras_sigmas
from catdiff.errors import UserError

diffusers = pytest.importorskip("diffusers")
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler  # noqa: E402

SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": T}


def ours(name: str, net: ToyNet, prediction: str, sigmas: torch.Tensor, x: torch.Tensor, seed: int | None = None):
    denoise = Denoiser(net, net.schedule, prediction)  # type: ignore[arg-type]
    steps: list[dict] = []
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    final = get_sampler(name)(denoise, x, sigmas, generator=generator, callback=steps.append)
    return final, [s["x"] for s in steps]


def theirs_ve(scheduler, net: ToyNet, x: torch.Tensor, seed: int | None = None) -> list[torch.Tensor]:
    """Run a diffusers k-style (VE sample) scheduler; the sample after every call of ``step``."""
    kwargs = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
    out = []
    for t in scheduler.timesteps:
        model_output = net(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(model_output, t, x, **kwargs).prev_sample
        out.append(x)
    return out


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = max(1.0, b.abs().max().item())
    torch.testing.assert_close(a / scale, b / scale, rtol=2e-5, atol=2e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("n", [8, 25])
def test_euler_matches_diffusers_every_step(n, karras, prediction):
    schedule = NoiseSchedule("scaled_linear", T, 0.00085, 0.012)
    net = ToyNet(schedule, prediction)
    scheduler = EulerDiscreteScheduler(
        **SCHEDULE,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        use_karras_sigmas=karras,
        timestep_spacing="linspace" if karras else "leading",  # leading: integer timesteps
    )
    scheduler.set_timesteps(n)
    sigmas = scheduler.sigmas.double()
    if karras:
        close(schedule.sampling_sigmas(n, "karras").float(), scheduler.sigmas, "karras sigmas")
    x = start_noise() * scheduler.init_noise_sigma
    final, steps = ours("euler", net, prediction, sigmas, x)
    for i, (a, b) in enumerate(zip(steps, theirs_ve(scheduler, net, x), strict=True)):
        close(a, b, f"step {i}")


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("n", [6, 20])
def test_heun_matches_diffusers(n, karras):
    schedule = NoiseSchedule("scaled_linear", T, 0.00085, 0.012)
    net = ToyNet(schedule, "eps")
    scheduler = HeunDiscreteScheduler(
        **SCHEDULE, use_karras_sigmas=karras, timestep_spacing="linspace" if karras else "leading"
    )
    scheduler.set_timesteps(n)
    sigmas = torch.unique_consecutive(scheduler.sigmas).double()  # diffusers repeats the inner levels
    assert len(sigmas) == n + 1
    x = start_noise() * scheduler.init_noise_sigma
    final, steps = ours("heun", net, "eps", sigmas, x)
    theirs = theirs_ve(scheduler, net, x)
    assert len(theirs) == 2 * n - 1  # two evaluations a step, one on the last
    for i, (a, b) in enumerate(zip(steps, theirs[1::2] + [theirs[-1]], strict=True)):
        close(a, b, f"step {i}")


@pytest.mark.parametrize(
    "name, algorithm, order",
    [("dpmpp_2m", "dpmsolver++", 2), ("dpmpp_3m", "dpmsolver++", 3), ("dpmpp_2m_sde", "sde-dpmsolver++", 2)],
)
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("n", [8, 20])
def test_dpm_solver_pp_matches_diffusers_every_step(n, prediction, name, algorithm, order):
    schedule = NoiseSchedule("scaled_linear", T, 0.00085, 0.012)
    net = ToyNet(schedule, prediction)
    scheduler = DPMSolverMultistepScheduler(
        **SCHEDULE, prediction_type=DIFFUSERS_PREDICTION[prediction], algorithm_type=algorithm, solver_order=order
    )
    scheduler.set_timesteps(n)
    sigmas = scheduler.sigmas.double()  # VE levels at integer timesteps, ending in 0
    noise = start_noise()  # diffusers' DPM-Solver works on the VP sample, which starts as pure noise
    theirs = []
    generator = torch.Generator().manual_seed(3)
    sample = noise
    for t in scheduler.timesteps:
        sample = scheduler.step(net(sample, t), t, sample, generator=generator).prev_sample
        theirs.append(sample)
    x = noise * (1 + sigmas[0] ** 2).sqrt().float()
    final, steps = ours(name, net, prediction, sigmas, x, seed=3)
    for i, (a, b) in enumerate(zip(steps, theirs, strict=True)):
        vp = a / (1 + sigmas[i + 1] ** 2).sqrt().float()
        close(vp, b, f"step {i}")


def test_sigma_grids():
    schedule = NoiseSchedule()
    k = karras_sigmas(10, 0.1, 80.0)
    assert len(k) == 11 and k[-1] == 0 and k[0] == pytest.approx(80.0) and k[-2] == pytest.approx(0.1)
    assert bool((k[1:] < k[:-1]).all())
    e = exponential_sigmas(5, 0.1, 10.0)
    torch.testing.assert_close(e[:-1].log().diff(), torch.full((4,), -math.log(100) / 4, dtype=torch.float64))
    assert torch.equal(schedule.sampling_sigmas(7, "uniform"), schedule.discrete_sigmas(7, "linspace"))
    assert schedule.sampling_sigmas(7, "karras")[0] == pytest.approx(schedule.sigma_max)
    with pytest.raises(UserError, match="karras"):
        schedule.sampling_sigmas(7, "cubic")  # type: ignore[arg-type]


# --- convergence on Gaussian data --------------------------------------------------------------

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
COV = torch.tensor([[0.6, 0.25], [0.25, 0.3]], dtype=torch.float64)
EIGVALS, EIGVECS = torch.linalg.eigh(COV)


def gaussian_denoise(x: torch.Tensor, sigma) -> torch.Tensor:
    """E[x0 | x] for x = x0 + sigma eps, x0 ~ N(MU, COV): MU + COV (COV + sigma^2 I)^-1 (x - MU)."""
    s2 = float(sigma) ** 2
    gain = EIGVECS @ torch.diag(EIGVALS / (EIGVALS + s2)) @ EIGVECS.T
    return MU + (x - MU) @ gain.T


def exact_ode_solution(x: torch.Tensor, sigma_max: float, sigma_min: float = 0.0) -> torch.Tensor:
    """The probability-flow ODE from sigma_max to sigma_min, solved exactly: in COV's eigenbasis
    each coordinate scales by sqrt((lambda + sigma_min^2) / (lambda + sigma_max^2))."""
    scale = EIGVECS @ torch.diag(((EIGVALS + sigma_min**2) / (EIGVALS + sigma_max**2)).sqrt()) @ EIGVECS.T
    return MU + (x - MU) @ scale.T


def start(n: int, sigma_max: float, seed: int = 0) -> torch.Tensor:
    """n draws of the exact marginal at sigma_max: N(MU, COV + sigma_max^2 I)."""
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(COV + sigma_max**2 * torch.eye(2, dtype=torch.float64))
    return MU + torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T


ODE_SOLVERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3}


def ode_errors(name: str, steps: tuple[int, ...]) -> list[float]:
    """Largest distance to the exact ODE solution, from sigma 20 to 0.05 on a log-SNR-uniform grid."""
    sigma_max, sigma_min = 20.0, 0.05
    x = start(64, sigma_max)
    exact = exact_ode_solution(x, sigma_max, sigma_min)
    errors = []
    for n in steps:
        sigmas = exponential_sigmas(n, sigma_min, sigma_max)[:-1]  # stop at sigma_min: the ODE's error alone
        errors.append(float((get_sampler(name)(gaussian_denoise, x, sigmas) - exact).norm(dim=1).max()))
    return errors


@pytest.mark.parametrize("name", sorted(ODE_SOLVERS))
def test_ode_solvers_converge_at_their_order(name):
    steps = (16, 32, 64)  # from 15 steps on, no step lowers its order at the end
    errors = ode_errors(name, steps)
    orders = [math.log2(a / b) for a, b in pairwise(errors)]
    expected = ODE_SOLVERS[name]
    if expected < 3:
        assert all(abs(order - expected) < 0.3 for order in orders), (errors, orders)
    else:
        # DPM-Solver++(3M) warms up with a first- and a second-order step (Lu et al.), so its
        # global error is second order in the limit; the third-order steps still make it the
        # most accurate at every step count.
        assert all(order > 1.8 for order in orders), (errors, orders)
        assert all(e3 < e2 for e3, e2 in zip(errors, ode_errors("dpmpp_2m", steps), strict=True)), errors


# (sampler, steps, tolerance on the covariance entries): first-order samplers need more steps
FEW_STEPS = {
    "ddim": (40, 0.08), "euler": (40, 0.08), "ddpm": (80, 0.08),
    "heun": (20, 0.03), "dpmpp_2m": (20, 0.03), "dpmpp_3m": (20, 0.03), "dpmpp_2m_sde": (20, 0.05),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_recovers_the_mean_and_covariance_in_few_steps(name):
    steps, tolerance = FEW_STEPS[name]
    sigma_max = 20.0
    x = start(6000, sigma_max, seed=1)
    sigmas = karras_sigmas(steps, 0.01, sigma_max)
    out = get_sampler(name)(gaussian_denoise, x, sigmas, generator=torch.Generator().manual_seed(2))
    # standard errors with 6000 draws: ~0.01 on the mean, ~2 % on the covariance entries
    assert torch.allclose(out.mean(0), MU, atol=0.04), out.mean(0)
    assert torch.allclose(out.T.cov(), COV, atol=tolerance), out.T.cov()


def test_sde_solver_error_shrinks_with_steps():
    sigma_max = 20.0
    x = start(20000, sigma_max, seed=4)
    errors = []
    for n in (4, 32):
        sigmas = karras_sigmas(n, 0.01, sigma_max)
        out = get_sampler("dpmpp_2m_sde")(gaussian_denoise, x, sigmas, generator=torch.Generator().manual_seed(5))
        errors.append(float((out.T.cov() - COV).abs().max()))
    assert errors[1] < errors[0], errors
