"""diffusers' autoencoder folders in and out: AutoencoderTiny (as TAESD), AutoencoderKL and
VQModel, each saved by diffusers itself, read by ``load_autoencoder``, compared output for output,
and written back by ``save_diffusers_autoencoder`` for diffusers' ``from_pretrained`` to load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from catdiff.autoencoders import Autoencoder, load_autoencoder
from catdiff.errors import UserError
from catdiff.io.diffusers_autoencoders import save_diffusers_autoencoder
from catdiff.models.vae import AutoencoderKL, AutoencoderKLConfig

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest on a busy machine

TOL = 1e-4
WEIGHTS = "diffusion_pytorch_model.safetensors"


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn afresh at about unit gain (norm weights near 1), so no layer is an
    identity or a zero that could hide a swapped key; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + ("norm" in name and name.endswith("weight")))
    return model.eval()


def images(shape=(2, 3, 32, 32), seed: int = 3) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(shape, seed: int = 4, scale: float = 1.0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def assert_close(ours: Tensor, theirs: Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


def assert_loads_cleanly(cls, folder: Path):
    """diffusers' own ``from_pretrained`` of ``folder``: nothing missing, unexpected or misshapen."""
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model.eval()


def assert_one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# --- AutoencoderTiny <-> TAESD ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default-size (SD-1.x TAESD) AutoencoderTiny with random weights, saved by diffusers."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "vae"
    randomised(diffusers.AutoencoderTiny()).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("safe", [True, False])
def test_autoencoder_tiny_folder_loads_as_taesd(tiny_folder: Path, tmp_path: Path, safe: bool) -> None:
    """Compared: raw TAESD latents, which are catdiff's diffusion-ready TAESD latents
    (``TAESD.encode_latents``) and diffusers' ``AutoencoderTiny.encode(images).latents`` alike,
    since AutoencoderTiny's ``scaling_factor`` is 1.0. Decoded from latents large enough to use
    the soft clamp. With ``safe=False`` the weights are the ``.bin`` file, read weights-only."""
    reference = diffusers.AutoencoderTiny.from_pretrained(tiny_folder).eval()
    folder = tiny_folder
    if not safe:
        reference.save_pretrained(folder := tmp_path / "vae", safe_serialization=False)
        assert (folder / "diffusion_pytorch_model.bin").is_file() and not (folder / WEIGHTS).exists()
    assert reference.config.scaling_factor == 1.0
    autoencoder = load_autoencoder(folder)
    assert autoencoder.kind == "taesd" and autoencoder.latent_channels == 4 and autoencoder.downsampling_factor == 8
    x, z = images(), latents((2, 4, 4, 4), scale=2.0)
    with torch.no_grad():
        assert_close(autoencoder.encode(x), reference.encode(x).latents)
        assert_close(autoencoder.decode(z), reference.decode(z).sample)


def test_taesd_written_as_autoencoder_tiny(tmp_path: Path) -> None:
    """The bundled TAESD -> an AutoencoderTiny folder -> diffusers: every key placed, the same outputs
    (raw TAESD latents both ways); and read back by catdiff with the same weights."""
    taesd = load_autoencoder("taesd")
    folder = save_diffusers_autoencoder(taesd, tmp_path / "vae")
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny" and "_diffusers_version" in config
    reference = assert_loads_cleanly(diffusers.AutoencoderTiny, folder)
    x, z = images(), latents((2, 4, 4, 4), scale=2.0)
    with torch.no_grad():
        assert_close(taesd.encode(x), reference.encode(x).latents)
        assert_close(taesd.decode(z), reference.decode(z).sample)
    assert load_autoencoder(folder).descriptor() == taesd.descriptor()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"act_fn": "silu"}, "act_fn='silu'"),
        ({"latent_channels": 16}, "latent_channels=16"),
        ({"num_decoder_blocks": (3, 3, 3, 2)}, "num_decoder_blocks="),
        ({"encoder_block_out_channels": (32, 32, 32, 32)}, "encoder_block_out_channels="),
        ({"upsampling_scaling_factor": 1, "scaling_factor": 0.5}, "upsampling_scaling_factor=1, scaling_factor=0.5"),
    ],
)
def test_autoencoder_tiny_other_than_taesd_is_refused(tmp_path: Path, change: dict, named: str) -> None:
    diffusers.AutoencoderTiny(**change).save_pretrained(tmp_path)
    with pytest.raises(UserError) as error:
        load_autoencoder(tmp_path)
    assert_one_line(error, "TAESD", named)


def test_autoencoder_tiny_weights_that_do_not_fit_are_named(tiny_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_folder / "config.json").read_text())
    state = load_file(tiny_folder / WEIGHTS)
    del state["decoder.layers.0.weight"]
    save_file({**state, "decoder.layers.99.weight": torch.zeros(1)}, tmp_path / WEIGHTS)
    with pytest.raises(UserError) as error:
        load_autoencoder(tmp_path)
    assert_one_line(error, "missing keys ['decoder.layers.0.weight']", "unexpected keys ['decoder.layers.99.weight']")
    (tmp_path / WEIGHTS).unlink()
    with pytest.raises(UserError) as error:
        load_autoencoder(tmp_path)
    assert_one_line(error, "no weights file")


# --- AutoencoderKL out ------------------------------------------------------------------------


def test_autoencoder_kl_written_for_diffusers(tmp_path: Path) -> None:
    """A catdiff AutoencoderKL -> a diffusers AutoencoderKL folder. Compared: diffusion-ready
    latents, i.e. diffusers' posterior mean x ``scaling_factor`` (0.5 here), and images decoded
    from them after diffusers divides by ``scaling_factor``."""
    torch.manual_seed(0)
    config = AutoencoderKLConfig(block_out_channels=(32, 64), layers_per_block=1, norm_groups=8, scaling_factor=0.5)
    autoencoder = Autoencoder(randomised(AutoencoderKL(config)))
    folder = save_diffusers_autoencoder(autoencoder, tmp_path / "vae")
    reference = assert_loads_cleanly(diffusers.AutoencoderKL, folder)
    assert reference.config.scaling_factor == 0.5
    x, z = images(), latents((2, 4, 16, 16))
    with torch.no_grad():
        assert_close(autoencoder.encode(x), reference.encode(x).latent_dist.mean * 0.5)
        assert_close(autoencoder.decode(z), reference.decode(z / 0.5).sample)
    again = load_autoencoder(folder)
    assert again.kind == "autoencoder_kl" and again.module.config == config
    assert again.descriptor() == autoencoder.descriptor()


def test_autoencoder_kl_that_diffusers_cannot_hold_is_refused(tmp_path: Path) -> None:
    config = AutoencoderKLConfig(block_out_channels=(32,), layers_per_block=1, norm_groups=8, norm_eps=1e-5)
    with pytest.raises(UserError) as error:
        save_diffusers_autoencoder(Autoencoder(AutoencoderKL(config)), tmp_path)
    assert_one_line(error, "eps")


# --- VQModel <-> VQAutoencoder ----------------------------------------------------------------


def tiny_vq(seed: int = 0, **extra):
    """A tiny VQModel whose codebook width (4) differs from its encoder's latent width (3)."""
    torch.manual_seed(seed)
    kwargs = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=3,
        num_vq_embeddings=16,
        vq_embed_dim=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    return randomised(diffusers.VQModel(**{**kwargs, **extra}), seed)


@pytest.fixture(scope="module")
def vq_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ldm") / "vqvae"
    tiny_vq(scaling_factor=0.5).save_pretrained(folder)
    return folder


@torch.no_grad()
def assert_like_the_ldm_pipeline(autoencoder: Autoencoder, reference) -> None:
    """``decode`` of sampled latents is what diffusers' ``LDMPipeline`` makes of them:
    ``vqvae.decode(latents / vqvae.config.scaling_factor)``, which quantises; ``encode`` gives the
    unquantised ``VQModel.encode(images).latents`` x ``scaling_factor``, the latents such a model
    learns; and an image encoded and decoded is ``VQModel``'s own round trip (``forward``)."""
    scale = reference.config.scaling_factor
    z, x = latents((2, 4, 16, 16)), images()
    decoded = autoencoder.decode(z)
    assert_close(decoded, reference.decode(z / scale).sample)
    unquantised = reference.decode(z / scale, force_not_quantize=True).sample
    assert (decoded - unquantised).abs().max() > 0.1  # the quantiser is not a no-op here
    assert_close(autoencoder.encode(x), reference.encode(x).latents * scale)
    assert_close(autoencoder.decode(autoencoder.encode(x)), reference(x).sample)


def test_vq_model_folder_loads_with_ldm_parity(vq_folder: Path) -> None:
    reference = diffusers.VQModel.from_pretrained(vq_folder).eval()
    autoencoder = load_autoencoder(vq_folder)
    assert autoencoder.kind == "vq_autoencoder"
    assert autoencoder.latent_channels == 4 and autoencoder.downsampling_factor == 2
    assert_like_the_ldm_pipeline(autoencoder, reference)
    codes = autoencoder.module.quantize.indices(latents((2, 4, 16, 16)) / 0.5)
    assert codes.unique().numel() > 8  # the lookup spreads over the codebook


def test_vq_autoencoder_written_for_diffusers_and_saved(vq_folder: Path, tmp_path: Path) -> None:
    autoencoder = load_autoencoder(vq_folder)
    folder = save_diffusers_autoencoder(autoencoder, tmp_path / "vqvae")
    reference = assert_loads_cleanly(diffusers.VQModel, folder)
    assert reference.config.vq_embed_dim == 4 and reference.config.scaling_factor == 0.5
    assert_like_the_ldm_pipeline(autoencoder, reference)
    again = load_autoencoder(autoencoder.save(tmp_path / "saved"))  # Autoencoder.save -> SAVERS
    assert again.descriptor() == autoencoder.descriptor() and again.module.config == autoencoder.module.config


def test_vq_model_with_old_attention_names(vq_folder: Path, tmp_path: Path) -> None:
    """Folders of old diffusers versions name the mid-block attention query/key/value/proj_attn."""
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in load_file(vq_folder / WEIGHTS).items():
        for new, name in old.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{name}.")
        state[key] = value
    assert any(".query." in k for k in state)
    (tmp_path / "config.json").write_text((vq_folder / "config.json").read_text())
    save_file(state, tmp_path / WEIGHTS)
    assert_like_the_ldm_pipeline(load_autoencoder(tmp_path), diffusers.VQModel.from_pretrained(vq_folder).eval())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"norm_type": "spatial"}, "norm_type='spatial'"),
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"mid_block_add_attention": False}, "mid_block_add_attention=False"),
    ],
)
def test_vq_model_catdiff_does_not_build_is_refused(tmp_path: Path, change: dict, named: str) -> None:
    tiny_vq(**change).save_pretrained(tmp_path)
    with pytest.raises(UserError) as error:
        load_autoencoder(tmp_path)
    assert_one_line(error, "VQModel", named)


def test_other_diffusers_classes_are_refused(tmp_path: Path) -> None:
    diffusers.UNet2DModel(
        block_out_channels=(8,),
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
    ).save_pretrained(tmp_path)
    with pytest.raises(UserError) as error:
        load_autoencoder(tmp_path)
    assert_one_line(error, "UNet2DModel", "AutoencoderKL, AutoencoderTiny, VQModel")
