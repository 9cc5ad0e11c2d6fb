"""Samplers: step-by-step parity with diffusers' DDPMScheduler / DDIMScheduler, and a Gaussian
problem whose ideal denoiser is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.toy_samplers import DIFFUSERS_PREDICTION, T, ToyNet, start_noise

from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.samplers import (
    SAMPLERS,
    get_sampler,
    register_sampler,
    sample_ddim,
    sample_ddpm,
)
from catdiff.diffusion.schedule import NoiseSchedule, alpha_bar, ve_to_vp, vp_to_ve
from catdiff.errors import UserError

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402


def _run_diffusers(scheduler, net, n: int, noise: torch.Tensor, generator, **step_kwargs):
    scheduler.set_timesteps(n)
    sample = noise.clone()
    samples, x0s = [], []
    for t in scheduler.timesteps:
        out = scheduler.step(net(sample, t), t, sample, generator=generator, **step_kwargs)
        sample = out.prev_sample
        samples.append(sample)
        x0s.append(out.pred_original_sample)
    return samples, x0s


def _run_ours(sampler, schedule, net, prediction, n, spacing, offset, noise, generator, **kwargs):
    sigmas = schedule.discrete_sigmas(n, spacing, offset)
    denoise = Denoiser(net, schedule, prediction)  # type: ignore[arg-type]
    x = vp_to_ve(noise, sigmas[0])  # == noise * sqrt(1 + sigmas[0]**2)
    steps = []
    final = sampler(denoise, x, sigmas, generator=generator, callback=steps.append, **kwargs)
    assert [s["i"] for s in steps] == list(range(n))
    assert torch.equal(steps[-1]["x"], final)
    samples = [ve_to_vp(s["x"], s["sigma_next"]) for s in steps]
    return samples, [s["denoised"] for s in steps], final


def _assert_steps_close(ours, theirs, ours_x0, theirs_x0, skip_last=False):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if skip_last and i == len(ours) - 1:
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, i=i: f"step {i}: {m}")
    for i, (a, b) in enumerate(zip(ours_x0, theirs_x0, strict=True)):
        # the x0 estimate at high noise divides by sqrt(alpha-bar) ~ 6e-3: compare relative to its size
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(
            a / scale, b / scale, rtol=1e-5, atol=1e-5, msg=lambda m, i=i: f"x0 at step {i}: {m}"
        )


# --- parity with diffusers ----------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("n", [10, 50])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_matches_diffusers_every_step(variance, n, spacing, prediction):
    schedule = NoiseSchedule("linear", T)
    net = ToyNet(schedule, prediction)
    scheduler = DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        variance_type={"beta_tilde": "fixed_small", "beta": "fixed_large"}[variance],
        clip_sample=False,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing=spacing,
    )
    noise = start_noise()
    theirs, theirs_x0 = _run_diffusers(scheduler, net, n, noise, torch.Generator().manual_seed(7))
    ours, ours_x0, final = _run_ours(
        sample_ddpm,
        schedule,
        net,
        prediction,
        n,
        spacing,
        0,
        noise,
        torch.Generator().manual_seed(7),
        variance=variance,
    )
    # diffusers adds noise on every step with t > 0, so on the last step of a grid that ends above
    # t = 0 (trailing: t = 99 -> "t = -1") its "fixed_large" sample gets noise of std
    # sqrt(1 - alpha-bar_99). Ho et al.'s Algorithm 2 adds none on the final step, and neither do
    # we: our result is diffusers' noise-free x0 estimate there. (fixed_small adds ~1e-10.)
    noisy_last = variance == "beta" and int(scheduler.timesteps[-1]) > 0
    _assert_steps_close(ours, theirs, ours_x0, theirs_x0, skip_last=noisy_last)
    if noisy_last:
        torch.testing.assert_close(final, theirs_x0[-1], rtol=1e-5, atol=1e-5)
        assert (theirs[-1] - theirs_x0[-1]).abs().max() > 0.1
    else:
        torch.testing.assert_close(final, theirs[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_full_1000_steps_matches_diffusers_in_float64(variance):
    """Plain DDPM over all T = 1000 training steps, on the SD schedule.

    Over 1000 float32 steps the two implementations drift apart by up to ~7e-5, most of it on the
    last few steps, where diffusers' float32 ``1 - alpha-bar_t`` cancels (alpha-bar_0 = 0.99915).
    So this run is float64 end to end, diffusers' alphas_cumprod included: then every step agrees
    to ~1e-13, which shows the formulas are the same and the float32 drift is only rounding.
    """
    schedule = NoiseSchedule("scaled_linear", T, 0.00085, 0.012)
    net = ToyNet(schedule, "eps")
    net.alphas_cumprod = schedule.alphas_cumprod
    scheduler = DDPMScheduler(
        num_train_timesteps=T,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        variance_type={"beta_tilde": "fixed_small", "beta": "fixed_large"}[variance],
        clip_sample=False,
    )
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    noise = start_noise(5)[:1, :, :4, :4].double()  # 1000 steps: keep the tensors tiny
    theirs, theirs_x0 = _run_diffusers(scheduler, net, T, noise, torch.Generator().manual_seed(3))
    ours, ours_x0, _ = _run_ours(
        sample_ddpm, schedule, net, "eps", T, "leading", 0, noise, torch.Generator().manual_seed(3), variance=variance
    )
    assert ours[0].dtype == torch.float64
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, i=i: f"step {i}: {m}")
    for a, b in zip(ours_x0, theirs_x0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0)])
@pytest.mark.parametrize("n", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_matches_diffusers_every_step(eta, n, spacing, offset, prediction):
    schedule = NoiseSchedule("scaled_linear", T, 0.00085, 0.012)
    net = ToyNet(schedule, prediction)
    scheduler = DDIMScheduler(
        num_train_timesteps=T,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    noise = start_noise()
    theirs, theirs_x0 = _run_diffusers(scheduler, net, n, noise, torch.Generator().manual_seed(11), eta=eta)
    ours, ours_x0, final = _run_ours(
        sample_ddim, schedule, net, prediction, n, spacing, offset, noise, torch.Generator().manual_seed(11), eta=eta
    )
    _assert_steps_close(ours, theirs, ours_x0, theirs_x0)
    torch.testing.assert_close(final, theirs[-1], rtol=1e-5, atol=1e-5)


def test_ddim_cosine_schedule_matches_diffusers():
    schedule = NoiseSchedule("cosine", T)
    net = ToyNet(schedule, "v")
    scheduler = DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    noise = start_noise()
    theirs, theirs_x0 = _run_diffusers(scheduler, net, 20, noise, None)
    ours, ours_x0, _ = _run_ours(sample_ddim, schedule, net, "v", 20, "trailing", 0, noise, None)
    _assert_steps_close(ours, theirs, ours_x0, theirs_x0)


# --- properties -----------------------------------------------------------------------------


def _toy_setup(n=20):
    schedule = NoiseSchedule()
    denoise = Denoiser(ToyNet(schedule, "eps"), schedule, "eps")  # type: ignore[arg-type]
    sigmas = schedule.discrete_sigmas(n)
    return denoise, sigmas, vp_to_ve(start_noise(), sigmas[0])


def test_ddim_eta0_is_deterministic_and_draws_nothing():
    denoise, sigmas, x = _toy_setup()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    a = sample_ddim(denoise, x, sigmas, generator=g)
    assert torch.equal(g.get_state(), state)  # no random draws at all
    b = sample_ddim(denoise, x.clone(), sigmas)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


def test_stochastic_samplers_repeat_with_the_same_seed():
    denoise, sigmas, x = _toy_setup()
    for sampler, kwargs in [(sample_ddpm, {}), (sample_ddpm, {"variance": "beta"}), (sample_ddim, {"eta": 1.0})]:
        a = sampler(denoise, x, sigmas, generator=torch.Generator().manual_seed(4), **kwargs)
        b = sampler(denoise, x, sigmas, generator=torch.Generator().manual_seed(4), **kwargs)
        c = sampler(denoise, x, sigmas, generator=torch.Generator().manual_seed(5), **kwargs)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


def test_ddim_eta1_is_ddpm_beta_tilde():
    """Song et al. 2021: DDIM with eta = 1 is the DDPM posterior sampler."""
    denoise, sigmas, x = _toy_setup()
    a = sample_ddim(denoise, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(9))
    b = sample_ddpm(denoise, x, sigmas, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_callback_sees_every_step():
    seen = []

    def denoise(x, sigma):
        seen.append(float(sigma))
        return x * 0 + 0.5

    sigmas = torch.tensor([10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    infos = []
    out = sample_ddim(denoise, torch.randn(2, 3), sigmas, callback=infos.append)
    assert seen == [10.0, 1.0, 0.1]
    assert torch.allclose(out, torch.full((2, 3), 0.5))
    assert [float(i["sigma"]) for i in infos] == [10.0, 1.0, 0.1]
    assert [float(i["sigma_next"]) for i in infos] == [1.0, 0.1, 0.0]
    assert set(infos[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim])
def test_bad_sigma_grids_are_rejected(sampler):
    denoise, _, x = _toy_setup()
    for bad in ([5.0], [1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [[2.0, 1.0]]):
        with pytest.raises(ValueError, match="sigmas"):
            sampler(denoise, x, torch.tensor(bad, dtype=torch.float64))


def test_bad_options_are_rejected():
    denoise, sigmas, x = _toy_setup(2)
    with pytest.raises(UserError, match="beta_tilde"):
        sample_ddpm(denoise, x, sigmas, variance="large")
    with pytest.raises(UserError, match="eta"):
        sample_ddim(denoise, x, sigmas, eta=-1.0)


def test_registry():
    assert SAMPLERS["ddpm"] is sample_ddpm and SAMPLERS["ddim"] is sample_ddim
    assert get_sampler("ddim") is sample_ddim
    with pytest.raises(UserError, match="ddim, ddpm"):
        get_sampler("plms")
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("ddim")(sample_ddim)


def test_vp_ve_helpers():
    x = torch.randn(4, 2)
    sigma = torch.tensor(3.0, dtype=torch.float64)
    assert alpha_bar(0.0) == 1.0 and alpha_bar(3.0) == pytest.approx(0.1)
    torch.testing.assert_close(ve_to_vp(vp_to_ve(x, sigma), sigma), x)
    torch.testing.assert_close(vp_to_ve(x, 3.0), x * math.sqrt(10))


# --- a problem with a known answer ----------------------------------------------------------

MU, S = 0.5, 0.7  # data ~ N(MU, S^2)


def gaussian_denoise(x, sigma):
    """The ideal denoiser E[x0 | x] for x = x0 + sigma * eps, x0 ~ N(MU, S^2)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return ((S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)).to(x.dtype)


def predicted_final_std(name: str, sigmas: torch.Tensor, eta: float = 0.0) -> float:
    """The exact std of a sampler's output on the Gaussian problem, from the paper's VP equations.

    Every step is affine in x_t plus independent noise, so the variance of x_t can be carried
    along exactly: this checks the noise scales of the samplers, not just the mean path.
    """
    var = S**2 + float(sigmas[0]) ** 2  # VE variance of the start
    var *= 1 / (1 + float(sigmas[0]) ** 2)  # ... in VP scale
    for sig_t, sig_s in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        a_t, a_s = 1 / (1 + sig_t**2), 1 / (1 + sig_s**2)
        # E[x0 | x_t] = MU + k (x_t - sqrt(a_t) MU): Gaussian posterior of x0 given x_t
        k = S**2 * math.sqrt(a_t) / (a_t * S**2 + 1 - a_t)
        if name == "ddim":  # Song et al. eq. 12 with eps_hat = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)
            std = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
            c = math.sqrt(max(1 - a_s - std**2, 0.0))
            slope = math.sqrt(a_s) * k + c * (1 - math.sqrt(a_t) * k) / math.sqrt(1 - a_t)
        else:  # Ho et al. eq. 7 on the strided grid
            beta = 1 - a_t / a_s
            slope = math.sqrt(a_s) * beta / (1 - a_t) * k + math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
            std = 0.0 if sig_s == 0 else math.sqrt((1 - a_s) / (1 - a_t) * beta if name == "ddpm" else beta)
        var = slope**2 * var + std**2
    return math.sqrt(var)  # the grid ends at sigma 0, where VP and VE agree


@pytest.mark.parametrize(
    "sampler,kwargs,name",
    [
        (sample_ddpm, {}, "ddpm"),
        (sample_ddpm, {"variance": "beta"}, "ddpm-beta"),
        (sample_ddim, {}, "ddim"),
        (sample_ddim, {"eta": 1.0}, "ddim"),
    ],
    ids=["ddpm-beta_tilde", "ddpm-beta", "ddim", "ddim-eta1"],
)
def test_samplers_recover_a_gaussian(sampler, kwargs, name):
    schedule = NoiseSchedule()
    n = 4000
    errors = []
    for steps in (50, 200):
        sigmas = schedule.discrete_sigmas(steps)
        g = torch.Generator().manual_seed(steps)
        # start from the exact marginal at sigmas[0]: N(MU, S^2 + sigma^2)
        x = MU + math.sqrt(S**2 + float(sigmas[0]) ** 2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
        out = sampler(gaussian_denoise, x, sigmas, generator=g, **kwargs)
        mean, std = float(out.mean()), float(out.std())
        # standard errors: of the mean S / sqrt(n) ~ 0.011; of the std S / sqrt(2 n) ~ 1.1 %
        assert mean == pytest.approx(MU, abs=0.04)
        assert std == pytest.approx(predicted_final_std(name, sigmas, kwargs.get("eta", 0.0)), rel=0.035)
        # the samplers' own discretisation bias at 50 steps: DDIM ~ -4 %, DDPM beta-tilde ~ -9 %,
        # DDPM beta ~ +1.5 %; it shrinks with more steps
        assert std == pytest.approx(S, rel=0.12)
        errors.append(abs(predicted_final_std(name, sigmas, kwargs.get("eta", 0.0)) / S - 1))
    assert errors[1] < errors[0]
