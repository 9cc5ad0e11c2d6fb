"""The denoiser between a sampler's dtype and the network's: a float64 sampler (k-diffusion's, or
ours on a float64 start) drives the bundled float32 cats and gets float64 back, the same
samples as in float32; under autocast the network still runs lowered."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from sd_tiny import imported_with_stand_ins
from torch import Tensor, nn

from catdiff.diffusion.conditioning import Unconditional
from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.noise import image_generators, standard_normal
from catdiff.diffusion.samplers import get_sampler
from catdiff.diffusion.schedule import NoiseSchedule, vp_to_ve
from catdiff.pipeline import Pipeline, pipeline_folder
from catdiff.precision import autocast

#: What k-diffusion's package imports beyond its samplers (its training, evaluation and models).
K_DIFFUSION_IMPORTS = ("torchvision", "torchsde", "torchdiffeq", "skimage", "jsonmerge", "dctorch", "einops")
STEPS = 8
#: float32 rounding of the network's input, carried through the steps (measured: about 1e-6).
TOL = 2e-5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cats() -> Pipeline:
    return Pipeline.from_folder(pipeline_folder("cats"))


def start(cats: Pipeline, sigmas: Tensor) -> Tensor:
    return vp_to_ve(standard_normal((2, *cats.sample_shape), image_generators([0, 1])), sigmas[0])


def test_k_diffusion_dpmpp_2m_in_float64_drives_the_float32_cats(cats: Pipeline) -> None:
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    stand_ins = {name: {} for name in (*K_DIFFUSION_IMPORTS, "cleanfid", "clip")}
    sigmas = cats.sigmas(STEPS)
    assert sigmas.dtype == torch.float64 and next(cats.network.parameters()).dtype == torch.float32
    denoise, x = cats.denoiser(Unconditional()), start(cats, sigmas)
    with imported_with_stand_ins("k_diffusion.sampling", stand_ins) as k_diffusion:
        doubles = k_diffusion.sample_dpmpp_2m(denoise, x.double(), sigmas, disable=True)
        floats = k_diffusion.sample_dpmpp_2m(denoise, x, sigmas, disable=True)
    assert doubles.dtype == torch.float64 and floats.dtype == torch.float32
    torch.testing.assert_close(doubles.float(), floats, atol=TOL, rtol=0)
    ours = get_sampler("dpmpp_2m")(denoise, x, sigmas)  # and k-diffusion's solver is ours
    torch.testing.assert_close(floats, ours, atol=TOL, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m"])
def test_our_samplers_in_float64_match_float32(cats: Pipeline, sampler: str) -> None:
    sigmas = cats.sigmas(STEPS)
    denoise, x = cats.denoiser(Unconditional()), start(cats, sigmas)
    doubles = get_sampler(sampler)(denoise, x.double(), sigmas)
    floats = get_sampler(sampler)(denoise, x, sigmas)
    assert doubles.dtype == torch.float64
    torch.testing.assert_close(doubles.float(), floats, atol=TOL, rtol=0)


def test_autocast_still_lowers_the_network(cats: Pipeline) -> None:
    sigma = cats.sigmas(STEPS)[2]
    denoise, x = cats.denoiser(Unconditional()), start(cats, cats.sigmas(STEPS))
    full = denoise(x, sigma)
    with autocast(torch.device("cpu"), "bf16"):
        lowered, lowered_doubles = denoise(x, sigma), denoise(x.double(), sigma)
    assert lowered.dtype == torch.float32 and lowered_doubles.dtype == torch.float64
    assert (lowered - full).abs().max() > 1e-4  # the convolutions ran in bf16
    torch.testing.assert_close(lowered_doubles.float(), lowered, atol=5e-3, rtol=0)


class Recorder(nn.Module):
    """A 1x1 convolution that records the dtype it was given."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv, self.seen = nn.Conv2d(2, 2, 1).to(dtype), []

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.seen.append((x_t.dtype, t.dtype))
        return self.conv(x_t)


@pytest.mark.parametrize("network_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float64])
def test_the_network_sees_its_dtype_and_the_sampler_gets_its_own(network_dtype, x_dtype) -> None:
    network = Recorder(network_dtype)
    x0 = Denoiser(network, NoiseSchedule())(torch.ones(1, 2, 3, 3, dtype=x_dtype), torch.tensor(0.5))
    assert network.seen == [(network_dtype, torch.float32)] and x0.dtype == x_dtype
    seen: list[torch.dtype] = []
    Denoiser(lambda x_t, t: seen.append(x_t.dtype) or x_t, NoiseSchedule())(torch.ones(1, 2, 3, 3, dtype=x_dtype), 0.5)
    assert seen == [x_dtype]  # a plain function gets its input as it is
