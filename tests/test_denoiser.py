"""The denoiser wrapper: exact x0 for an exact network, and keeping x0 in the data range."""

from __future__ import annotations

import pytest
import torch

from catdiff.diffusion.denoiser import Denoiser, dynamic_threshold
from catdiff.diffusion.objective import training_target
from catdiff.diffusion.schedule import NoiseSchedule


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_an_exact_network_gives_the_exact_clean_image(prediction: str) -> None:
    schedule = NoiseSchedule("cosine")
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 2, 4, 4, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, 2, 4, 4, generator=generator, dtype=torch.float64)
    sigma = schedule.sigmas[torch.tensor([100, 700])]

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ac = 1 / (1 + sigma**2)
        alpha, sigma_vp = ac.sqrt().view(-1, 1, 1, 1), (1 - ac).sqrt().view(-1, 1, 1, 1)
        torch.testing.assert_close(x_t, alpha * x0 + sigma_vp * eps)
        torch.testing.assert_close(t.double(), torch.tensor([100.0, 700.0], dtype=torch.float64), atol=1e-3, rtol=0)
        return training_target(prediction, x0, eps, alpha, sigma_vp)

    denoised = Denoiser(oracle, schedule, prediction)(x0 + sigma.view(-1, 1, 1, 1) * eps, sigma)
    torch.testing.assert_close(denoised, x0)


def test_dynamic_threshold_leaves_in_range_samples_and_rescales_wild_ones() -> None:
    tame = torch.rand(1, 3, 8, 8) * 1.8 - 0.9
    wild = torch.linspace(-3, 3, 3 * 8 * 8).view(1, 3, 8, 8)
    out = dynamic_threshold(torch.cat([tame, wild]), percentile=0.995, limit=1.0)
    torch.testing.assert_close(out[0], tame[0])
    assert out[1].abs().max() <= 1.0 + 1e-6
    assert torch.equal(out[1].sign(), wild[0].sign())
    assert out[1].flatten().diff().min() >= 0  # order (hence hue) is kept, unlike clamping


def test_static_clip_and_dynamic_threshold_through_the_denoiser() -> None:
    schedule = NoiseSchedule()
    x = torch.full((1, 3, 4, 4), 50.0)
    wild = lambda x_t, t: -10 * torch.ones_like(x_t)  # noqa: E731  an eps far off the data
    assert Denoiser(wild, schedule, clip_x0=1.0)(x, 20.0).abs().max() == 1.0
    dynamic = Denoiser(wild, schedule, clip_x0=1.0, dynamic_percentile=0.995)(x, 20.0)
    assert dynamic.abs().max() <= 1.0 + 1e-6
