"""Per-image seeds (EDM's generate.py convention): image i of a call with seed S is the image of
seed S + i, whatever n, the batch size or the server's pooling, with stochastic samplers too."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
from conftest import catdiff
from PIL import Image

from catdiff.diffusion.conditioning import Unconditional
from catdiff.diffusion.noise import image_generators
from catdiff.errors import UserError
from catdiff.pipeline import Pipeline
from catdiff.serve.app import Generator
from catdiff.serve.batcher import Job, Piece

STOCHASTIC = [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp_2m_sde", {})]
SEED = 40


@pytest.fixture(scope="module")
def pipeline(pipeline_dir: Path) -> Pipeline:
    return Pipeline.from_folder(pipeline_dir)


@pytest.mark.parametrize("sampler,options", STOCHASTIC)
def test_image_i_is_the_image_of_seed_s_plus_i_whatever_the_batching(pipeline, sampler, options) -> None:
    settings = {"steps": 6, "sampler": sampler, "sampler_options": options}
    whole = pipeline.sample(8, seed=SEED, batch_size=8, **settings)
    in_threes = pipeline.sample(8, seed=SEED, batch_size=3, **settings)
    alone = torch.cat([pipeline.sample(1, seed=SEED + i, **settings) for i in range(8)])
    torch.testing.assert_close(in_threes, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, whole, atol=1e-5, rtol=0)
    assert not torch.allclose(whole[0], whole[1])  # every image has its own noise


def test_the_start_noise_is_torch_randn_of_the_image_seed(pipeline) -> None:
    """Code outside catdiff reproduces an image's start noise as the issue states it."""
    captured = []
    pipeline.sample(2, seed=SEED, steps=1, sampler="euler", callback=lambda info: captured.append(info["denoised"]))
    expected = torch.stack(
        [torch.randn(pipeline.sample_shape, generator=torch.Generator().manual_seed(SEED + i)) for i in range(2)]
    )
    sigma = pipeline.sigmas(1, None)[0]
    x = expected * float((1 + sigma**2).sqrt())
    torch.testing.assert_close(pipeline.denoiser(Unconditional())(x, sigma), captured[0])


def test_the_server_s_pooled_batch_gives_the_cli_image_for_each_seed(
    pipeline, pipeline_dir: Path, tmp_path: Path
) -> None:
    settings = {"steps": 4, "sampler": "ddpm", "guidance": None}  # as the server submits them
    jobs = [Job((4, "ddpm", None), 1, {"seed": 7, **settings}), Job((4, "ddpm", None), 2, {"seed": 11, **settings})]
    generator = Generator(pipeline, None)
    pieces = [Piece(jobs[0], 0, 1, 1), Piece(jobs[1], 1, 1, 1), Piece(jobs[1], 0, 1, 1)]  # the second job in two
    first, second, third = generator.sample(pieces)  # one pooled batch of three images, stochastic sampler
    responses = [generator.respond(jobs[0], [first]), generator.respond(jobs[1], [third, second])]
    flags = ["--steps", "4", "--sampler", "ddpm", "--out-dir", str(tmp_path)]
    for seed in (7, 11, 12):
        result = catdiff("generate", "--model", str(pipeline_dir), "--n", "1", "--seed", str(seed), *flags)
        assert result.returncode == 0, result.stderr
    served = [responses[0].candidates[0].image] + [c.image for c in responses[1].candidates]
    by_seed = {Image.open(tmp_path / f"{seed:06d}.png").tobytes(): seed for seed in (7, 11, 12)}
    assert sorted(by_seed.get(Image.open(io.BytesIO(base64.b64decode(image))).tobytes()) for image in served) == [
        7,
        11,
        12,
    ]


def test_an_unknown_or_misspelt_sampler_option_is_a_user_error_naming_it(pipeline) -> None:
    with pytest.raises(UserError, match="unknown option 'etta' for sampler ddim; it accepts eta"):
        pipeline.sample(1, steps=2, sampler="ddim", sampler_options={"etta": 0.5})
    with pytest.raises(UserError, match="unknown option 'eta' for sampler euler; it takes no options"):
        pipeline.sample(1, steps=2, sampler="euler", sampler_options={"eta": 0.5})
    with pytest.raises(UserError, match="accepts variance"):
        pipeline.sample_batch(image_generators([0]), steps=2, sampler="ddpm", sampler_options={"var": "beta"})


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_per_image_generators_match_diffusers_given_the_same_list_of_generators(sampler: str) -> None:
    """The independent reference: diffusers' schedulers drawing each image's noise from its own
    generator (``randn_tensor`` with a list) make the same steps as our per-image draws."""
    diffusers = pytest.importorskip("diffusers")
    from catdiff.diffusion.denoiser import Denoiser
    from catdiff.diffusion.samplers import get_sampler
    from catdiff.diffusion.schedule import NoiseSchedule, vp_to_ve

    schedule = NoiseSchedule("linear")
    mix = torch.randn(3, 3, generator=torch.Generator().manual_seed(1)) * 0.3

    def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("oc,bchw->bohw", mix, x_t) + t.view(-1, 1, 1, 1).float() / 1000)

    seeds = [3, 4, 5]
    noise = torch.stack([torch.randn(3, 4, 4, generator=g) for g in image_generators(seeds)])
    cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[sampler]
    scheduler = cls(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    scheduler.set_timesteps(10)
    generators = image_generators(seeds)
    for g, n in zip(generators, noise, strict=True):  # the start noise comes first from each image's generator
        torch.randn(n.shape, generator=g)
    sample, options = noise.clone(), {"eta": 0.6} if sampler == "ddim" else {}
    for t in scheduler.timesteps:
        sample = scheduler.step(net(sample, t.expand(3)), t, sample, generator=generators, **options).prev_sample
    sigmas = schedule.discrete_sigmas(10, "leading")
    ours_generators = image_generators(seeds)
    start = torch.stack([torch.randn(3, 4, 4, generator=g) for g in ours_generators])
    ours = get_sampler(sampler)(
        Denoiser(net, schedule), vp_to_ve(start, sigmas[0]), sigmas, generator=ours_generators, **options
    )
    torch.testing.assert_close(ours, sample, atol=1e-5, rtol=1e-5)
