"""AutoencoderKL (the SD-1.x VAE): parity with diffusers, and loading every published layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.tiny import compvis_vae_shapes
from safetensors.torch import save_file
from torch import Tensor, nn

from catdiff.errors import UserError
from catdiff.io.vae import load_vae
from catdiff.io.vae_keys import vae_state_from_compvis, vae_state_to_compvis
from catdiff.models.vae import AutoencoderKL, AutoencoderKLConfig

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
SD_DIFFUSERS = dict(  # SD-1.x's vae/config.json (diffusers' own AutoencoderKL() defaults are NOT SD's)
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)


def diffusers_kwargs(widths: tuple[int, ...], layers: int, groups: int, **extra) -> dict:
    return dict(
        block_out_channels=widths,
        layers_per_block=layers,
        norm_num_groups=groups,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        **extra,
    )


def ours_config(kwargs: dict) -> AutoencoderKLConfig:
    return AutoencoderKLConfig(
        block_out_channels=kwargs["block_out_channels"],
        layers_per_block=kwargs["layers_per_block"],
        norm_groups=kwargs["norm_num_groups"],
        latent_channels=kwargs["latent_channels"],
        scaling_factor=kwargs.get("scaling_factor", 0.18215),
    )


def perturbed(model: nn.Module, seed: int = 1, std: float = 0.05) -> nn.Module:
    """Noise on every parameter, so GroupNorm's 1/0 init cannot hide a swapped key."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def tiny_diffusers(widths=(32, 64), layers=1, groups=8, seed=0, **extra):
    torch.manual_seed(seed)
    return perturbed(diffusers.AutoencoderKL(**diffusers_kwargs(widths, layers, groups, **extra)))


def images(shape=(2, 3, 32, 24), seed=3) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def assert_same_outputs(ref, ours: AutoencoderKL, x: Tensor) -> None:
    """``ref`` is a diffusers AutoencoderKL: same posterior and same decoded image."""
    ref_post = ref.encode(x).latent_dist
    post = ours.encode(x)
    torch.testing.assert_close(post.mean, ref_post.mean, atol=TOL, rtol=0)
    torch.testing.assert_close(post.logvar, ref_post.logvar, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.decode(ref_post.mean), ref.decode(ref_post.mean).sample, atol=TOL, rtol=0)


# --- the CompVis layout, written out from the CompVis Encoder/Decoder constructors ----------


def random_compvis_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if len(shape) == 1 and ".norm" in key and key.endswith(".weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
        else:
            state[key] = 0.05 * torch.randn(shape, generator=gen)
    return state


def diffusers_from_compvis(state: dict[str, Tensor], kwargs: dict):
    """The reference: diffusers' own converter, then diffusers' model."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    converted = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in state.items()}, kwargs)
    ref = diffusers.AutoencoderKL(**kwargs)
    ref.load_state_dict(converted, strict=True)
    return ref.eval()


# --- the model -----------------------------------------------------------------------------


@pytest.mark.parametrize(("widths", "layers"), [((32, 64), 1), ((16, 32, 32), 2)])
def test_parity_with_diffusers(widths: tuple[int, ...], layers: int) -> None:
    ref = tiny_diffusers(widths, layers, groups=8)
    ours = AutoencoderKL(ours_config(diffusers_kwargs(widths, layers, 8))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the diffusers layout, no remapping
    x = images((2, 3, 32, 24))
    assert_same_outputs(ref, ours, x)
    with torch.no_grad():
        ref_post, post = ref.encode(x).latent_dist, ours.encode(x)
        torch.testing.assert_close(post.kl(), ref_post.kl(), atol=1e-3, rtol=1e-5)
        z_ref = ref_post.sample(generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(post.sample(torch.Generator().manual_seed(5)), z_ref, atol=TOL, rtol=0)
    f = ours.downsampling_factor
    assert f == 2 ** (len(widths) - 1) and post.mean.shape == (2, 4, 32 // f, 24 // f)


def test_latent_helpers_and_training_step() -> None:
    torch.manual_seed(0)
    cfg = AutoencoderKLConfig(block_out_channels=(32, 64), layers_per_block=1, norm_groups=8, scaling_factor=0.5)
    model = AutoencoderKL(cfg)
    x = images((2, 3, 16, 16))
    with torch.no_grad():
        post = model.eval().encode(x)
        torch.testing.assert_close(model.encode_latents(x), post.mean * 0.5)
        a = model.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(1))
        b = model.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and not torch.allclose(a, post.mean * 0.5)
        torch.testing.assert_close(model.decode_latents(a), model.decode(a / 0.5))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    recon, post = model(x, generator=torch.Generator().manual_seed(2))
    loss = (recon - x).square().mean() + 1e-6 * post.kl().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="norm_groups"):
        AutoencoderKLConfig(block_out_channels=(24, 48), norm_groups=32)
    assert AutoencoderKLConfig().downsampling_factor == 8
    assert AutoencoderKLConfig(block_out_channels=[32, 64]).block_out_channels == (32, 64)


# --- the full-size key map -------------------------------------------------------------------


def test_full_size_key_maps_are_complete() -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in AutoencoderKL(AutoencoderKLConfig()).state_dict().items()}
        dstate = diffusers.AutoencoderKL(**SD_DIFFUSERS).state_dict()
    assert len(ours) == 248  # SD-1.x VAE: 248 tensors
    # diffusers layout: identical names and shapes
    assert {k: tuple(v.shape) for k, v in dstate.items()} == ours

    # CompVis layout, from the CompVis constructors (ch=128, ch_mult=(1,2,4,4), num_res_blocks=2)
    compvis_shapes = compvis_vae_shapes(128, (1, 2, 4, 4), 2)
    compvis = {k: torch.empty(s, device="meta") for k, s in compvis_shapes.items()}
    assert len(compvis) == len(ours)
    mapped = {k: tuple(v.shape) for k, v in vae_state_from_compvis(compvis).items()}
    assert sorted(set(ours) - set(mapped)) == [] and sorted(set(mapped) - set(ours)) == []
    assert mapped == ours
    ours_meta = {k: torch.empty(s, device="meta") for k, s in ours.items()}
    assert {k: tuple(v.shape) for k, v in vae_state_to_compvis(ours_meta).items()} == compvis_shapes

    # cross-check against diffusers' own single-file converter, key by key
    full = {f"first_stage_model.{k}": v for k, v in compvis.items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.empty(320, 4, 3, 3, device="meta")
    theirs = convert_ldm_vae_checkpoint(full, dict(SD_DIFFUSERS))
    assert {k: tuple(v.shape) for k, v in theirs.items()} == ours  # (which tensor goes where: next test)


def test_full_size_mapping_moves_the_right_tensors() -> None:
    """Mark every CompVis tensor with its own index (tiny 4-level model), map it with ours and
    with diffusers' converter, and require the same tensor under every key."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    kwargs = diffusers_kwargs((8, 8, 16, 16), 2, 8)
    shapes = compvis_vae_shapes(8, (1, 1, 2, 2), 2)
    state = {k: torch.full(s, float(i)) for i, (k, s) in enumerate(shapes.items())}
    theirs = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in state.items()}, kwargs)
    ours = vae_state_from_compvis(state)
    assert theirs.keys() == ours.keys()
    for key in theirs:
        assert torch.equal(theirs[key], ours[key]), key
    assert AutoencoderKL(ours_config(kwargs)).state_dict().keys() == ours.keys()
    assert {k: torch.equal(v, state[k]) for k, v in vae_state_to_compvis(ours).items()} == dict.fromkeys(state, True)


# --- loading files ---------------------------------------------------------------------------


def test_diffusers_folder_round_trip(tmp_path: Path) -> None:
    ref = tiny_diffusers(scaling_factor=0.5)
    ref.save_pretrained(tmp_path / "pipe" / "vae")
    assert (tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    for path in (tmp_path / "pipe" / "vae", tmp_path / "pipe"):
        ours = load_vae(path)
        assert ours.config == ours_config(diffusers_kwargs((32, 64), 1, 8, scaling_factor=0.5))
        assert not ours.training
        assert_same_outputs(ref, ours, images())


def test_old_diffusers_attention_names(tmp_path: Path) -> None:
    ref = tiny_diffusers()
    ref.save_pretrained(tmp_path)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in ref.state_dict().items():
        for new, name in old.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{name}.")
        state[key] = value.contiguous()
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    assert_same_outputs(ref, load_vae(tmp_path), images())


def write_single(path: Path, state: dict[str, Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({"state_dict": state, "global_step": 840000}, path)
    return path


@pytest.mark.parametrize("kind", ["vae.safetensors", "full.safetensors", "vae.ckpt", "full.ckpt"])
def test_compvis_files_load(tmp_path: Path, kind: str) -> None:
    kwargs = diffusers_kwargs((32, 64), 1, 32)  # 32 groups: the default a single file implies
    state = random_compvis_state(compvis_vae_shapes(32, (1, 2), 1))
    ref = diffusers_from_compvis(state, kwargs)
    if kind.startswith("full"):
        file_state = {f"first_stage_model.{k}": v for k, v in state.items()}
        file_state["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3)
        file_state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
        file_state["model_ema.decay"] = torch.tensor(0.9999)
        file_state["alphas_cumprod"] = torch.rand(1000)
    else:  # standalone releases also carry their training losses and EMA counters
        file_state = dict(state)
        file_state["loss.logvar"] = torch.zeros(())
        file_state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
        file_state["model_ema.num_updates"] = torch.tensor(10)
    ours = load_vae(write_single(tmp_path / kind, file_state))
    assert ours.config == ours_config(kwargs)
    assert_same_outputs(ref, ours, images())


def test_compvis_file_with_explicit_config(tmp_path: Path) -> None:
    kwargs = diffusers_kwargs((16, 32, 32), 2, 8)  # 8 groups cannot be read from the weights
    state = random_compvis_state(compvis_vae_shapes(16, (1, 2, 2), 2), seed=4)
    ref = diffusers_from_compvis(state, kwargs)
    ours = load_vae(write_single(tmp_path / "vae.safetensors", state), config=ours_config(kwargs))
    assert_same_outputs(ref, ours, images())
    # ours -> CompVis -> file -> ours is the identity
    compvis = {k: v.contiguous() for k, v in vae_state_to_compvis(ours.state_dict()).items()}
    save_file(compvis, tmp_path / "again.safetensors")
    again = load_vae(tmp_path / "again.safetensors", config=ours.config)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values(), strict=True))


def tiny_compvis() -> dict[str, Tensor]:
    return random_compvis_state(compvis_vae_shapes(32, (1, 2), 1))


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_missing_key_is_refused(tmp_path: Path, prefix: str) -> None:
    state = {prefix + k: v for k, v in tiny_compvis().items()}
    del state[prefix + "decoder.up.0.block.1.norm2.bias"]
    if prefix:
        state["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    with pytest.raises(UserError, match=rf"missing keys \['{prefix}decoder\.up\.0\.block\.1\.norm2\.bias'\]"):
        load_vae(write_single(tmp_path / "vae.safetensors", state))


def test_extra_key_is_refused(tmp_path: Path) -> None:
    state = tiny_compvis()
    state["encoder.mid.attn_2.q.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(UserError, match=r"unexpected keys \['encoder\.mid\.attn_2\.q\.weight'\]"):
        load_vae(write_single(tmp_path / "vae.ckpt", state))
    state = tiny_compvis()
    state["decoder.up.1.block.2.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # a layer too many
    with pytest.raises(UserError, match=r"unexpected keys \['decoder\.up\.1\.block\.2\.conv1\.weight'\]"):
        load_vae(write_single(tmp_path / "vae.safetensors", state))


def test_keys_of_two_layouts_for_one_tensor_are_refused(tmp_path: Path) -> None:
    state = tiny_compvis()
    state["encoder.conv_norm_out.weight"] = state["encoder.norm_out.weight"].clone()
    with pytest.raises(UserError, match="same tensor") as error:
        load_vae(write_single(tmp_path / "vae.safetensors", state))
    assert "'encoder.norm_out.weight'" in str(error.value) and "'encoder.conv_norm_out.weight'" in str(error.value)


def test_diffusers_folder_with_missing_key_or_wrong_shape(tmp_path: Path) -> None:
    ref = tiny_diffusers()
    ref.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in state.items() if k != "decoder.conv_norm_out.bias"}, weights)
    with pytest.raises(UserError, match=r"missing keys \['decoder\.conv_norm_out\.bias'\]"):
        load_vae(tmp_path)
    save_file({**state, "quant_conv.bias": torch.zeros(3)}, weights)
    with pytest.raises(UserError, match=r"wrong shapes for \['quant_conv\.bias'\]"):
        load_vae(tmp_path)


@pytest.mark.parametrize("name", ["vae.safetensors", "full.ckpt"])
def test_truncated_file_is_refused(tmp_path: Path, name: str) -> None:
    state = tiny_compvis()
    if name.startswith("full"):
        state = {f"first_stage_model.{k}": v for k, v in state.items()}
    path = write_single(tmp_path / name, state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="vae.safetensors|full.ckpt"):
        load_vae(path)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_vae(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_vae(tmp_path / "empty")
    (tmp_path / "taesd").mkdir()
    (tmp_path / "taesd" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    save_file({"x": torch.zeros(1)}, tmp_path / "taesd" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(UserError, match="AutoencoderTiny"):
        load_vae(tmp_path / "taesd")
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, tmp_path / "unet.safetensors")
    with pytest.raises(UserError, match="no VAE weights"):
        load_vae(tmp_path / "unet.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown weights format"):
        load_vae(tmp_path / "weights.npz")
