"""SD-1.x end to end: the same image as diffusers' StableDiffusionPipeline (and its img2img
pipeline) for the same weights, prompt, noise and scheduler, loaded from a diffusers folder and
from CompVis single files; every sampler with guidance; the ``catdiff txt2img`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, catdiff
from PIL import Image
from sd_tiny import SCHEDULE, compvis_state, tiny_reference_pipeline, write_single_file

from catdiff.diffusion.samplers import SAMPLERS
from catdiff.sd.pipeline import StableDiffusion

diffusers = pytest.importorskip("diffusers")

PROMPT, NEGATIVE = "a photo of a cat, (masterpiece:1.2)", "blurry, lowres"
SIZE = (16, 16)  # pixels; the tiny VAE has two levels, so latents are 8 x 8
IMAGE_TOL = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The diffusers pipeline, and the folder and single files that hold its weights."""
    root = tmp_path_factory.mktemp("sd")
    pipe = tiny_reference_pipeline(root)
    state = compvis_state(pipe)
    paths = {
        "diffusers folder": root / "pipe",
        "safetensors": write_single_file(root / "tiny-sd.safetensors", state),
        "ckpt": write_single_file(root / "tiny-sd.ckpt", state),
    }
    return pipe, paths


@pytest.fixture(scope="module")
def ours(reference) -> dict[str, StableDiffusion]:
    _, paths = reference
    return {name: StableDiffusion.from_checkpoint(path) for name, path in paths.items()}


def start_noise(seed: int = 5) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


# diffusers' scheduler for each of our samplers, set up to take the same steps. Euler runs on the
# "leading" grid: for "trailing" and "linspace" diffusers starts Euler at sigma_max * noise
# instead of sqrt(1 + sigma_max^2) * noise, which is not the unit-variance VP start.
SCHEDULERS = {
    "ddim": ("trailing", lambda: diffusers.DDIMScheduler(**SCHEDULE, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)),
    "euler": ("leading", lambda: diffusers.EulerDiscreteScheduler(**SCHEDULE, timestep_spacing="leading")),
    "dpmpp_2m": ("trailing", lambda: diffusers.DPMSolverMultistepScheduler(**SCHEDULE, timestep_spacing="trailing", final_sigmas_type="zero")),
}  # fmt: skip


def diffusers_image(pipe, sampler: str, output_type: str, **kwargs) -> torch.Tensor:
    pipe.scheduler = SCHEDULERS[sampler][1]()
    out = pipe(
        PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.5, num_inference_steps=8, height=SIZE[0], width=SIZE[1],
        output_type=output_type, **kwargs,
    )  # fmt: skip
    return out.images


@pytest.mark.parametrize("source", ["diffusers folder", "safetensors", "ckpt"])
@pytest.mark.parametrize("sampler", sorted(SCHEDULERS))
def test_txt2img_matches_diffusers(reference, ours, source: str, sampler: str) -> None:
    pipe, _ = reference
    noise = start_noise()
    theirs = diffusers_image(pipe, sampler, "pt", latents=noise)
    theirs_latents = diffusers_image(pipe, sampler, "latent", latents=noise)
    latents = []
    image = ours[source].text_to_image(
        PROMPT, negative_prompt=NEGATIVE, guidance=7.5, steps=8, sampler=sampler, spacing=SCHEDULERS[sampler][0],
        seed=5, size=SIZE, callback=lambda info: latents.append(info["x"]),
    )  # fmt: skip
    scale = theirs_latents.abs().max()
    torch.testing.assert_close(latents[-1] / scale, theirs_latents / scale, atol=1e-5, rtol=0)
    torch.testing.assert_close((image + 1) / 2, theirs, atol=IMAGE_TOL, rtol=0)


def test_per_image_seeds_match_diffusers_given_a_list_of_generators(reference, ours) -> None:
    """Image i of seed S is the image of seed S + i: diffusers with one generator per image agrees."""
    pipe, _ = reference
    generators = [torch.Generator().manual_seed(seed) for seed in (5, 6)]
    theirs = diffusers_image(pipe, "ddim", "pt", generator=generators, num_images_per_prompt=2)
    options = {"negative_prompt": NEGATIVE, "guidance": 7.5, "steps": 8, "sampler": "ddim", "spacing": "trailing"}
    both = ours["safetensors"].text_to_image(PROMPT, n=2, seed=5, size=SIZE, **options)
    torch.testing.assert_close((both + 1) / 2, theirs, atol=IMAGE_TOL, rtol=0)
    second = ours["safetensors"].text_to_image(PROMPT, n=1, seed=6, size=SIZE, **options)
    torch.testing.assert_close(second[0], both[1], atol=1e-5, rtol=0)


def test_img2img_matches_diffusers(reference, ours) -> None:
    pipe, _ = reference
    init = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(8))  # [0, 1], as diffusers takes tensors
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = SCHEDULERS["ddim"][1]()
    theirs = img2img(
        PROMPT, image=init, strength=0.6, negative_prompt=NEGATIVE, guidance_scale=7.5, num_inference_steps=10,
        generator=torch.Generator().manual_seed(3), output_type="pt",
    ).images  # fmt: skip
    image = ours["safetensors"].image_to_image(
        init * 2 - 1, PROMPT, strength=0.6, negative_prompt=NEGATIVE, guidance=7.5, steps=10, sampler="ddim", seed=3
    )
    torch.testing.assert_close((image + 1) / 2, theirs, atol=IMAGE_TOL, rtol=0)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_with_guidance(ours, sampler: str) -> None:
    sd = ours["diffusers folder"]
    options = {"negative_prompt": NEGATIVE, "guidance": 5.0, "steps": 4, "sampler": sampler, "size": SIZE}
    a = sd.text_to_image(PROMPT, seed=1, **options)
    assert a.shape == (1, 3, *SIZE) and torch.isfinite(a).all()
    assert torch.equal(a, sd.text_to_image(PROMPT, seed=1, **options))  # the same seed, the same image
    assert not torch.equal(a, sd.text_to_image(PROMPT, seed=2, **options))
    assert not torch.equal(a, sd.text_to_image(PROMPT, seed=1, **{**options, "guidance": 1.0}))


def test_guidance_one_is_the_conditional_prediction(ours) -> None:
    sd = ours["ckpt"]
    denoise = sd.guided_denoiser(PROMPT, NEGATIVE, 1.0, n=2)
    x, sigma = start_noise().repeat(2, 1, 1, 1) * 3, torch.tensor(2.0)
    context = sd.encode_prompts([PROMPT]).expand(2, -1, -1)
    t = sd.schedule.sigma_to_t(sigma.double().expand(2)).float()
    with torch.no_grad():
        eps = sd.unet(x / (1 + sigma**2).sqrt(), t, context)
    torch.testing.assert_close(denoise(x, sigma), x - sigma * eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights(reference, ours, dtype: torch.dtype) -> None:
    _, paths = reference
    sd = StableDiffusion.from_checkpoint(paths["safetensors"], dtype=dtype)
    for module in (sd.unet, sd.vae, sd.text_encoder):
        assert {p.dtype for p in module.parameters()} == {dtype}
    options = {"negative_prompt": NEGATIVE, "steps": 3, "sampler": "dpmpp_2m", "size": SIZE, "seed": 4}
    half = sd.text_to_image(PROMPT, **options)
    full = ours["safetensors"].text_to_image(PROMPT, **options)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().mean() < 0.05


def test_bad_arguments(ours) -> None:
    from catdiff.errors import UserError

    sd = ours["ckpt"]
    image = torch.zeros(1, 3, *SIZE)
    with pytest.raises(UserError, match="strength"):
        sd.image_to_image(image, PROMPT, strength=0.0)
    with pytest.raises(UserError, match="no step to run"):
        sd.image_to_image(image, PROMPT, strength=0.1, steps=5)
    with pytest.raises(UserError, match="multiples of 2"):
        sd.text_to_image(PROMPT, size=(15, 16), steps=1)


# --- the command line ---------------------------------------------------------------------------


def test_cli_txt2img_and_img2img(reference, tmp_path: Path) -> None:
    _, paths = reference
    out = tmp_path / "cat.png"
    args = ["--negative", NEGATIVE, "--steps", "3", "--sampler", "euler", "--seed", "7", "--guidance", "6"]
    result = catdiff(
        "txt2img", str(paths["safetensors"]), PROMPT, "--out", str(out), "--width", "24", "--height", "16", *args
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and Image.open(out).size == (24, 16)

    init = tmp_path / "init.png"
    Image.fromarray(np.full((21, 18, 3), 200, dtype=np.uint8)).save(init)  # cut down to 16 x 16
    again = tmp_path / "again.png"
    result = catdiff(
        "txt2img", str(paths["diffusers folder"]), PROMPT, "--out", str(again), "--init-image", str(init),
        "--strength", "0.5", "--precision", "bf16", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Image.open(again).size == (16, 16)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["missing.safetensors", "a cat"], ["checkpoint not found", "missing.safetensors"]),
        (["{ckpt}", "a cat", "--steps", "0"], ["--steps", "between 1 and 1000"]),
        (["{ckpt}", "a cat", "--strength", "1.5"], ["--strength", "(0, 1]"]),
        (["{ckpt}", "a cat", "--init-image", "nope.png"], ["nope.png"]),
        (["{ckpt}", "a cat", "--width", "13", "--height", "16", "--steps", "1"], ["multiples of 2"]),
    ],
    ids=["missing-file", "steps-0", "strength", "missing-init-image", "size"],
)
def test_cli_bad_input_is_one_line(reference, tmp_path: Path, args: list[str], words: list[str]) -> None:
    _, paths = reference
    args = [a.replace("{ckpt}", str(paths["ckpt"])) for a in args]
    assert_one_line_error(catdiff("txt2img", *args, "--out", str(tmp_path / "x.png"), cwd=tmp_path), *words)


def test_text_encoder_saved_by_older_transformers(reference, ours, tmp_path: Path) -> None:
    """SD-1.5's published folders name the text encoder's tensors ``text_model.*`` and keep the
    ``position_ids`` buffer (transformers 4); both load."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, paths = reference
    folder = shutil.copytree(paths["diffusers folder"], tmp_path / "pipe")
    weights = folder / "text_encoder" / "model.safetensors"
    state = {f"text_model.{k.removeprefix('text_model.')}": v for k, v in load_file(weights).items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(state, weights)
    old = StableDiffusion.from_checkpoint(folder)
    torch.testing.assert_close(old.encode_prompts([PROMPT]), ours["diffusers folder"].encode_prompts([PROMPT]))
