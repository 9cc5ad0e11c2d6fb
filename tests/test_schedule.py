"""NoiseSchedule and the training objective against diffusers' DDPMScheduler / DDIMScheduler."""

from __future__ import annotations

import pytest
import torch

from catdiff.diffusion.objective import PREDICTIONS, min_snr_weight, predicted_x0, training_target
from catdiff.diffusion.schedule import NoiseSchedule
from catdiff.errors import UserError

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

T = 1000
# (our kind, diffusers' beta_schedule, beta_start, beta_end)
KINDS = [
    ("linear", "linear", 1e-4, 0.02),
    ("scaled_linear", "scaled_linear", 0.00085, 0.012),
    ("cosine", "squaredcos_cap_v2", 1e-4, 0.02),
]


def _pair(kind: str, dkind: str, b0: float, b1: float, **config):
    ours = NoiseSchedule(kind, T, b0, b1)
    theirs = DDPMScheduler(num_train_timesteps=T, beta_start=b0, beta_end=b1, beta_schedule=dkind, **config)
    return ours, theirs


@pytest.mark.parametrize("kind,dkind,b0,b1", KINDS)
def test_betas_and_alphas_cumprod_match_diffusers(kind, dkind, b0, b1):
    ours, theirs = _pair(kind, dkind, b0, b1)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == torch.float64
    # diffusers works in float32: agreement is to float32 rounding (cumprod accumulates a little)
    torch.testing.assert_close(ours.betas, theirs.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=2e-5, atol=1e-6)
    exact = ((1 - ours.alphas_cumprod) / ours.alphas_cumprod).sqrt()
    torch.testing.assert_close(ours.sigmas, exact, rtol=1e-12, atol=0)
    # diffusers' float32 1 - alpha-bar cancels at small t (alpha-bar_0 = 0.9999): loose there
    ac32 = theirs.alphas_cumprod
    torch.testing.assert_close(ours.sigmas, ((1 - ac32) / ac32).sqrt().double(), rtol=1e-3, atol=0)
    assert bool((ours.sigmas[1:] > ours.sigmas[:-1]).all())
    assert ours.sigma_min == pytest.approx(float(ours.sigmas[0]))
    assert ours.sigma_max == pytest.approx(float(ours.sigmas[-1]))


def test_unknown_kind_and_config_round_trip():
    with pytest.raises(UserError, match="cosine"):
        NoiseSchedule("quadratic")  # type: ignore[arg-type]
    s = NoiseSchedule("scaled_linear", 500, 0.00085, 0.012)
    assert NoiseSchedule.from_config(s.to_config()) == s


@pytest.mark.parametrize("kind,dkind,b0,b1", KINDS)
def test_q_sample_matches_add_noise(kind, dkind, b0, b1):
    ours, theirs = _pair(kind, dkind, b0, b1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 5, 5, generator=g)
    noise = torch.randn(6, 3, 5, 5, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    # atol: diffusers' float32 alpha-bar_0 = 0.9999 leaves sqrt(1 - alpha-bar_0) only ~1e-4 accurate
    torch.testing.assert_close(ours.q_sample(x0, t, noise), theirs.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


# --- timestep grids ------------------------------------------------------------------------

STEPS = [1, 2, 3, 7, 10, 20, 25, 30, 33, 50, 64, 100, 250, 333, 999, 1000]


def _diffusers_timesteps(cls, n: int, spacing: str, offset: int = 0) -> list[int]:
    sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(n)
    return sched.timesteps.tolist()


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_timesteps_match_diffusers(cls, spacing, offset):
    s = NoiseSchedule()
    for n in STEPS:
        if spacing == "leading" and offset and n == T:
            continue  # diffusers would give timestep T, out of range; ours clamps (tested below)
        ours = s.timesteps(n, spacing, offset)
        assert ours.dtype == torch.long
        assert ours.tolist() == _diffusers_timesteps(cls, n, spacing, offset), (spacing, offset, n)


def test_timesteps_edge_cases():
    s = NoiseSchedule()
    assert s.timesteps(T, "leading", 1).max() == T - 1
    with pytest.raises(UserError, match="between 1 and"):
        s.timesteps(0)
    with pytest.raises(UserError, match="between 1 and"):
        s.timesteps(T + 1)
    with pytest.raises(UserError, match="trailing"):
        s.timesteps(10, "uniform")  # type: ignore[arg-type]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_discrete_sigmas(spacing):
    s = NoiseSchedule("scaled_linear", T, 0.00085, 0.012)
    sig = s.discrete_sigmas(20, spacing)
    assert sig.dtype == torch.float64 and len(sig) == 21 and sig[-1] == 0
    assert bool((sig[1:] < sig[:-1]).all())
    torch.testing.assert_close(sig[:-1], s.sigmas[s.timesteps(20, spacing)])


# --- t <-> sigma ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,dkind,b0,b1", KINDS)
def test_sigma_t_round_trip(kind, dkind, b0, b1):
    s = NoiseSchedule(kind, T, b0, b1)
    t = torch.arange(T, dtype=torch.float64)
    # integer timesteps hit the table exactly, and come back
    torch.testing.assert_close(s.t_to_sigma(t), s.sigmas, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sigma_to_t(s.sigmas), t, rtol=0, atol=1e-9)
    # fractional timesteps: log-sigma is interpolated linearly, so sigma_to_t inverts exactly
    frac = torch.linspace(0, T - 1, 4001, dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(frac)), frac, rtol=0, atol=1e-6)
    sig = torch.logspace(-1.5, 1.5, 301, dtype=torch.float64) * s.sigmas.median()
    sig = sig[(sig > s.sigma_min) & (sig < s.sigma_max)]
    torch.testing.assert_close(s.t_to_sigma(s.sigma_to_t(sig)), sig, rtol=1e-9, atol=0)


def test_sigma_to_t_clamps_outside_the_table():
    s = NoiseSchedule()
    out = s.sigma_to_t(torch.tensor([0.0, s.sigma_min / 10, s.sigma_max * 10], dtype=torch.float64))
    assert out.tolist() == [0.0, 0.0, float(T - 1)]
    assert s.t_to_sigma(torch.tensor([-5.0, T + 5.0])).tolist() == pytest.approx([s.sigma_min, s.sigma_max])


def test_snr():
    s = NoiseSchedule()
    t = torch.tensor([0, 10, 500, 999])
    ac = s.alphas_cumprod[t]
    torch.testing.assert_close(s.snr(t), ac / (1 - ac))
    torch.testing.assert_close(s.snr(t), 1 / s.sigmas[t] ** 2)


# --- objective ------------------------------------------------------------------------------


def _batch(kind="linear", dkind="linear", b0=1e-4, b1=0.02, seed=0):
    ours, theirs = _pair(kind, dkind, b0, b1)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, 4, 6, 6, generator=g)
    eps = torch.randn(5, 4, 6, 6, generator=g)
    t = torch.tensor([0, 3, 400, 900, 999])
    alpha, sigma = (v.float().view(-1, 1, 1, 1) for v in ours.vp_scales(t))
    return ours, theirs, x0, eps, t, alpha, sigma


@pytest.mark.parametrize("kind,dkind,b0,b1", KINDS)
def test_v_target_matches_get_velocity(kind, dkind, b0, b1):
    _, theirs, x0, eps, t, alpha, sigma = _batch(kind, dkind, b0, b1)
    ours = training_target("v", x0, eps, alpha, sigma)
    torch.testing.assert_close(ours, theirs.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-5)  # see q_sample


def test_eps_and_x0_targets():
    _, _, x0, eps, _, alpha, sigma = _batch()
    assert training_target("eps", x0, eps, alpha, sigma) is eps
    assert training_target("x0", x0, eps, alpha, sigma) is x0
    with pytest.raises(UserError, match="eps, v, x0"):
        training_target("noise", x0, eps, alpha, sigma)  # type: ignore[arg-type]


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_predicted_x0_inverts_training_target(prediction):
    ours, _, x0, eps, t, alpha, sigma = _batch()
    x_t = ours.q_sample(x0, t, eps)
    target = training_target(prediction, x0, eps, alpha, sigma)
    # the x0 of eps-prediction divides by alpha, which is small at t=999: allow float32 growth
    torch.testing.assert_close(predicted_x0(prediction, target, x_t, alpha, sigma), x0, rtol=1e-4, atol=1e-4)


def test_predicted_x0_matches_diffusers_step():
    """The x0 estimates agree with the pred_original_sample of DDPMScheduler.step."""
    ours, _, x0, eps, t, alpha, sigma = _batch()
    x_t = ours.q_sample(x0, t, eps)
    out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for prediction, dpred in [("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")]:
        sched = DDPMScheduler(num_train_timesteps=T, prediction_type=dpred, clip_sample=False)
        for i, ti in enumerate(t.tolist()):
            theirs = sched.step(out[i : i + 1], ti, x_t[i : i + 1], generator=torch.Generator()).pred_original_sample
            mine = predicted_x0(prediction, out[i : i + 1], x_t[i : i + 1], alpha[i], sigma[i])
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights(gamma):
    s = NoiseSchedule()
    t = torch.tensor([0, 50, 200, 500, 999])
    snr = s.snr(t)
    # the formulas of diffusers' training scripts (train_text_to_image.py, --snr_gamma)
    base = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    torch.testing.assert_close(min_snr_weight("eps", snr, gamma), base / snr)
    torch.testing.assert_close(min_snr_weight("v", snr, gamma), base / (snr + 1))
    torch.testing.assert_close(min_snr_weight("x0", snr, gamma), base)
    assert min_snr_weight("eps", snr, gamma)[0] == pytest.approx(gamma / float(snr[0]))  # high snr: clipped
    assert min_snr_weight("eps", snr, gamma)[-1] == pytest.approx(1.0)  # low snr: plain eps loss


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weight_is_the_same_loss_in_x0_space(prediction):
    """Weighted losses in every parameterisation equal min(snr, gamma) * |x0 - x0_hat|^2."""
    ours, _, x0, eps, t, alpha, sigma = _batch()
    x_t = ours.q_sample(x0, t, eps)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    eps_hat = (x_t - alpha * x0_hat) / sigma  # the output consistent with x0_hat
    out = training_target(prediction, x0_hat, eps_hat, alpha, sigma)
    target = training_target(prediction, x0, eps, alpha, sigma)
    snr = ours.snr(t).float()
    gamma = 5.0
    loss = min_snr_weight(prediction, snr, gamma) * ((out - target) ** 2).mean(dim=(1, 2, 3))
    expected = snr.clamp(max=gamma) * ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-6)


def test_log_normal_noise_levels_are_drawn_around_their_mean():
    """EDM's training distribution (Karras et al. 2022): ln sigma ~ N(mean, std), at timesteps."""
    from catdiff.training.tasks import DiffusionTask

    schedule = NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0 = torch.zeros(20_000, 1)
    uniform, _ = DiffusionTask(schedule, "v").draw(x0, torch.Generator().manual_seed(0))
    t, noise = DiffusionTask(schedule, "v", noise_levels=(-0.5, 0.8)).draw(x0, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and noise.shape == x0.shape
    log_sigma = schedule.sigmas[t].log()
    assert float(log_sigma.mean()) == pytest.approx(-0.5, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(0.8, abs=0.03)
    assert float(schedule.sigmas[uniform].log().median()) > 0.3  # uniform t sits higher: median sigma 1.6


def test_noise_levels_need_a_positive_spread():
    from catdiff.training.config import TrainConfig

    assert TrainConfig(noise_levels=[0.0, 1.0]).noise_levels == (0.0, 1.0)
    with pytest.raises(UserError, match="noise_levels"):
        TrainConfig(noise_levels=(0.0, 0.0))
