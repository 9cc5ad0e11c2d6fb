"""Diffusers pipelines in and out, on tiny random models saved by diffusers itself.

In: the UNet2DModel layouts of google/ddpm-cat-256, google/ddpm-celebahq-256, google/ddpm-cifar10-32
and CompVis/ldm-celebahq-256, and the scale-shift layout of catdiff's own U-Net, load into
catdiff's U-Net; a DDPMPipeline folder samples in catdiff as in diffusers (DDPM with the same
draws, DDIM). Out: `catdiff export --format diffusers` loads with diffusers' classes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, catdiff, write_tiny_model
from PIL import Image
from synthetic import TINY_UNET, make_image_folder

from catdiff.errors import UserError
from catdiff.io.diffusers_unet import unet_config_from_diffusers
from catdiff.pipeline import Pipeline

diffusers = pytest.importorskip("diffusers")

README = Path(__file__).parents[1] / "README.md"

# Tiny versions of the hub models' layouts: the same block types, freq_shift, sinusoid order,
# padding and norms, narrower and shallower.
LAYOUTS = {
    "ddpm-cat-256": dict(
        block_out_channels=(16, 16, 32, 32, 64, 64),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    ),
    "ddpm-celebahq-256": dict(
        block_out_channels=(16, 16, 32, 32, 64, 64),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    ),
    "ddpm-cifar10-32": dict(
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    ),
    "ldm-celebahq-256": dict(
        block_out_channels=(16, 32, 48, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16,
    ),
    "catdiff scale-shift twin": dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8,
    ),
}  # fmt: skip


def random_unet(layout: dict, size: int = 32, channels: int = 3):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1, norm_num_groups=8, **layout
    ).eval()
    with torch.no_grad():
        for parameter in unet.parameters():  # not the zero-initialised defaults: every weight counts
            parameter.normal_(0, 0.05)
    return unet


def ddpm_folder(tmp_path: Path, layout: str = "ddpm-cat-256", **scheduler: object) -> Path:
    folder = tmp_path / "ddpm"
    config = dict(beta_schedule="linear", clip_sample=True, variance_type="fixed_small", **scheduler)
    diffusers.DDPMPipeline(
        unet=random_unet(LAYOUTS[layout]), scheduler=diffusers.DDPMScheduler(**config)
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unet2dmodel_layouts_load_into_catdiffs_unet(tmp_path: Path, layout: str) -> None:
    unet = random_unet(LAYOUTS[layout])
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler()).save_pretrained(tmp_path / "p")
    pipeline = Pipeline.from_folder(tmp_path / "p")
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3.0, 811.0])
    with torch.no_grad():
        difference = (pipeline.network(x, t) - unet(x, t).sample).abs().max().item()
    assert difference <= 1e-5, difference
    assert pipeline.sampling == {  # DDIMScheduler's defaults: 50 leading steps, x0 clipped
        "sampler": "ddim", "steps": 50, "spacing": "leading", "sampler_options": {"ddim": {"eps": "network"}}
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"down_block_types": ("ResnetDownsampleBlock2D",) * 3}, "block type 'ResnetDownsampleBlock2D'"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type 'fourier'"),
        ({"num_class_embeds": 10}, "num_class_embeds 10"),
        ({"center_input_sample": True}, "center_input_sample True"),
        ({"up_block_types": ("UpBlock2D",) * 3}, "does not mirror"),
    ],
)
def test_other_unet2dmodel_configurations_are_one_line(change: dict, words: str) -> None:
    config = {**diffusers.UNet2DModel(**LAYOUTS["catdiff scale-shift twin"], norm_num_groups=8).config, **change}
    with pytest.raises(UserError, match=re.escape(words)):
        unet_config_from_diffusers(config)


def test_generate_on_a_ddpm_pipeline_folder_equals_diffusers(tmp_path: Path) -> None:
    """DDPM with the same draws from `torch.Generator().manual_seed(seed)`, and DDIM built from
    the folder's scheduler config (which clips x0, so DDIM steps with the network's own noise
    estimate, diffusers' default): images equal to diffusers' pipelines."""
    folder = ddpm_folder(tmp_path)
    ddpm = diffusers.DDPMPipeline.from_pretrained(folder)
    ddim = diffusers.DDIMPipeline(unet=ddpm.unet, scheduler=diffusers.DDIMScheduler.from_config(ddpm.scheduler.config))
    for seed in (0, 5):
        theirs = {
            "ddpm": ddpm(generator=torch.Generator().manual_seed(seed), num_inference_steps=20, output_type="np").images,
            "ddim": ddim(generator=torch.Generator().manual_seed(seed), num_inference_steps=10, eta=0.0, output_type="np").images,
        }  # fmt: skip
        ours = {
            "ddpm": ["--steps", "20"],
            "ddim": ["--sampler", "ddim", "--spacing", "leading", "--steps", "10"],
        }
        pipeline = Pipeline.from_folder(folder)
        for sampler, flags in ours.items():
            out = tmp_path / f"{sampler}-{seed}.png"
            result = catdiff("generate", "--model", str(folder), "--n", "1", "--seed", str(seed), "--precision", "fp32",
                             *flags, "--out", str(out))  # fmt: skip
            assert result.returncode == 0, result.stderr
            expected = (theirs[sampler][0] * 255).round().astype(np.uint8)
            written = np.asarray(Image.open(out))[2:-2, 2:-2]  # inside the grid's border
            assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
            steps = int(flags[flags.index("--steps") + 1])
            options = {"sampler": sampler, "steps": steps, "spacing": "leading", "precision": "fp32"}
            images = pipeline.sample(1, seed=seed, **options)
            difference = np.abs((images[0].permute(1, 2, 0).numpy() + 1) / 2 - theirs[sampler][0]).max()
            assert difference <= 1e-5, (sampler, difference)


def test_a_diffusers_folder_serves_and_evaluates_as_a_model(tmp_path: Path) -> None:
    folder = ddpm_folder(tmp_path)
    pipeline = Pipeline.from_folder(folder)
    assert pipeline.sampling == {
        "sampler": "ddpm", "steps": 1000, "spacing": "leading", "sampler_options": {"ddim": {"eps": "network"}}
    }  # fmt: skip
    assert pipeline.clip_x0 == 1.0 and pipeline.sample_shape == (3, 32, 32)
    result = catdiff("sample", str(folder), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr
    from fastapi.testclient import TestClient

    from catdiff.serve import create_app

    client = TestClient(create_app(folder, window_s=0.0))
    assert client.get("/api/info").json()["model"] == "ddpm"
    assert client.post("/api/generate", json={"steps": 3}).status_code == 200
    images = make_image_folder(tmp_path / "images", n=8, size=32)
    result = catdiff("eval", str(folder), "--train", str(images), "--n", "4", "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["frechet"] > 0


def test_a_scheduler_catdiff_does_not_map_is_one_line(tmp_path: Path) -> None:
    folder = ddpm_folder(tmp_path)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**config, "variance_type": "learned_range"})
    )
    assert_one_line_error(
        catdiff("generate", "--model", str(folder), "--out", str(tmp_path / "x.png")), "variance_type"
    )


def test_export_of_a_pixel_model_is_a_ddpm_pipeline(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny", TINY_UNET, [3, 8, 8])
    out = tmp_path / "exported"
    assert (
        catdiff("export", str(model), "--out", str(out), "--format", "diffusers", "--sampler", "ddim").returncode == 0
    )
    loaded = diffusers.DDPMPipeline.from_pretrained(out)
    assert isinstance(loaded.scheduler, diffusers.DDIMScheduler)
    unet, info = diffusers.UNet2DModel.from_pretrained(out / "unet", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = Pipeline.from_folder(model).network
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 500.0])
    with torch.no_grad():
        assert (unet(x, t).sample - ours(x, t)).abs().max() <= 1e-5
    back = Pipeline.from_folder(out)  # and in again
    with torch.no_grad():
        assert (back.network(x, t) - ours(x, t)).abs().max() <= 1e-5


def test_export_of_the_class_conditional_digits_is_refused(tmp_path: Path) -> None:
    result = catdiff("export", "digits", "--out", str(tmp_path / "d"), "--format", "diffusers")
    assert_one_line_error(result, "no diffusers class fits")
    assert not (tmp_path / "d").exists()


def readme_diffusers_code() -> str:
    """The Python block of README's "Using catdiff with diffusers" that samples an export."""
    text = README.read_text()
    section = text[text.index("## Using catdiff with diffusers") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_bundled_cats_export_to_diffusers_and_readmes_code_samples_them(tmp_path: Path) -> None:
    out = tmp_path / "cats-diffusers"
    result = catdiff("export", "cats", "--out", str(out), "--format", "diffusers")
    assert result.returncode == 0, result.stderr
    assert "left out: the guide network" in result.stdout
    unet, info = diffusers.UNet2DModel.from_pretrained(out / "unet", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    cats = Pipeline.from_folder("cats")
    x, t = torch.randn(2, *cats.sample_shape), torch.tensor([20.0, 900.0])
    with torch.no_grad():
        difference = (unet(x, t).sample - cats.network(x, t)).abs().max().item()
    assert difference <= 1e-5, difference
    _, info = diffusers.AutoencoderTiny.from_pretrained(out / "vae", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # README's lines, as written, in the folder above the export.
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        namespace: dict = {}
        exec(readme_diffusers_code(), namespace)
    finally:
        os.chdir(here)
    theirs = namespace["image"]
    ours = cats.sample(
        1, seed=0, condition=cats.autoguidance(1.0), sampler="dpmpp_2m", spacing="trailing", precision="fp32"
    )
    difference = (theirs - ours).abs().max().item()
    assert difference <= 1e-4, difference


def test_an_ldm_pipeline_folder_samples_as_diffusers_ldm_pipeline(tmp_path: Path) -> None:
    """The layout of CompVis/ldm-celebahq-256: UNet2DModel + VQModel + DDIMScheduler."""
    torch.manual_seed(0)
    vqvae = diffusers.VQModel(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3, num_vq_embeddings=32, norm_num_groups=8,
    ).eval()  # fmt: skip
    with torch.no_grad():  # codes spread as widely as this random U-Net's latents (about 1e3), so that the nearest
        vqvae.quantize.embedding.weight.normal_(0, 1e3)  # code of each is clear of float-rounding ties
    scheduler = diffusers.DDIMScheduler(beta_schedule="linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    unet = random_unet(LAYOUTS["ldm-celebahq-256"], size=16)
    diffusers.LDMPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "ldm")
    theirs = diffusers.LDMPipeline.from_pretrained(tmp_path / "ldm")(
        generator=torch.Generator().manual_seed(3), num_inference_steps=8, output_type="np"
    ).images[0]
    pipeline = Pipeline.from_folder(tmp_path / "ldm")
    assert pipeline.sampling == {"sampler": "ddim", "steps": 50, "spacing": "leading"}
    ours = pipeline.sample(1, seed=3, steps=8, precision="fp32")[0].permute(1, 2, 0).numpy()
    difference = np.abs((ours + 1) / 2 - theirs).max()
    assert difference <= 1e-4, difference
