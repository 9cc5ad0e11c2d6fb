"""The SD-1.x U-Net: parity with diffusers' UNet2DConditionModel, and the CompVis key map,
complete at full size (every key and shape of a ``v1-5-pruned-emaonly`` single file, on the
meta device: no memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import compvis_vae_shapes
from sd_tiny import perturb

from catdiff.models.vae import AutoencoderKLConfig
from catdiff.sd.checkpoint import models_from_single_file
from catdiff.sd.text_encoder import CLIPTextConfig
from catdiff.sd.unet import SDUNet, SDUNetConfig
from catdiff.sd.unet_keys import infer_config, unet_state_from_compvis, unet_state_to_compvis

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def diffusers_unet_kwargs(config: SDUNetConfig) -> dict:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.cross_attention))
    return {
        "block_out_channels": config.block_out_channels,
        "layers_per_block": config.layers_per_block,
        "down_block_types": down,
        "up_block_types": up,
        "cross_attention_dim": config.cross_attention_dim,
        "attention_head_dim": config.attention_heads,
        "norm_num_groups": config.norm_groups,
        "sample_size": config.sample_size,
    }


TINY_CONFIGS = [
    SDUNetConfig(
        block_out_channels=(32, 64), cross_attention=(True, False), layers_per_block=1, attention_heads=(2, 4),
        cross_attention_dim=24, norm_groups=8, sample_size=8,
    ),
    SDUNetConfig(
        block_out_channels=(16, 32, 32), cross_attention=(True, True, False), layers_per_block=2,
        attention_heads=(1, 2, 2), cross_attention_dim=16, norm_groups=8, sample_size=8,
    ),
]  # fmt: skip


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["2-levels", "3-levels"])
@pytest.mark.parametrize("size", [(8, 8), (9, 7)], ids=["even", "odd"])
def test_parity_with_diffusers(config: SDUNetConfig, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    ref = perturb(diffusers.UNet2DConditionModel(**diffusers_unet_kwargs(config)), seed=1)
    ours = SDUNet(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the diffusers layout, no remapping
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, *size, generator=gen)
    t = torch.tensor([3.0, 871.5])
    context = torch.randn(2, 77, config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, context), ref(x, t, context).sample, atol=1e-5, rtol=1e-5)


def test_compvis_map_moves_the_tensors_diffusers_converter_moves() -> None:
    """Mark every tensor with its own index, write it in CompVis names with our inverse map, and
    require diffusers' own single-file converter to put the same tensor under every key."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = SDUNetConfig(
        block_out_channels=(32, 64, 64), cross_attention=(True, False, True), layers_per_block=2, cross_attention_dim=8
    )
    ours = {k: torch.full(v.shape, float(i)) for i, (k, v) in enumerate(SDUNet(config).state_dict().items())}
    compvis = unet_state_to_compvis(ours, config)
    theirs = convert_ldm_unet_checkpoint(
        {f"model.diffusion_model.{k}": v for k, v in compvis.items()}, {"layers_per_block": 2}
    )
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert unet_state_from_compvis(compvis, config).keys() == ours.keys()
    assert infer_config(compvis, source=Path("tiny")) == SDUNetConfig(**{**config.__dict__, "attention_heads": 8})


# --- the full-size single file, from the CompVis constructors -----------------------------------


def compvis_unet_shapes(
    model_channels: int = 320,
    channel_mult: tuple[int, ...] = (1, 2, 4, 4),
    attention_levels: tuple[int, ...] = (0, 1, 2),
    num_res_blocks: int = 2,
    context_dim: int = 768,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a CompVis ``UNetModel`` (ldm/modules/diffusionmodules/openaimodel.py with
    use_spatial_transformer=True, transformer_depth=1, conv proj_in/proj_out), built
    independently of catdiff, following that constructor's loops."""
    shapes: dict[str, tuple[int, ...]] = {}
    time_dim = 4 * model_channels

    def param(name: str, *shape: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = shape
        if bias:
            shapes[f"{name}.bias"] = (shape[0],)

    def resblock(name: str, c_in: int, c_out: int) -> None:
        param(f"{name}.in_layers.0", c_in)
        param(f"{name}.in_layers.2", c_out, c_in, 3, 3)
        param(f"{name}.emb_layers.1", c_out, time_dim)
        param(f"{name}.out_layers.0", c_out)
        param(f"{name}.out_layers.3", c_out, c_out, 3, 3)
        if c_in != c_out:
            param(f"{name}.skip_connection", c_out, c_in, 1, 1)

    def transformer(name: str, c: int) -> None:
        param(f"{name}.norm", c)
        param(f"{name}.proj_in", c, c, 1, 1)
        block = f"{name}.transformer_blocks.0"
        for attn, kv_dim in (("attn1", c), ("attn2", context_dim)):
            param(f"{block}.{attn}.to_q", c, c, bias=False)
            param(f"{block}.{attn}.to_k", c, kv_dim, bias=False)
            param(f"{block}.{attn}.to_v", c, kv_dim, bias=False)
            param(f"{block}.{attn}.to_out.0", c, c)
        param(f"{block}.ff.net.0.proj", 8 * c, c)
        param(f"{block}.ff.net.2", c, 4 * c)
        for norm in ("norm1", "norm2", "norm3"):
            param(f"{block}.{norm}", c)
        param(f"{name}.proj_out", c, c, 1, 1)

    param("time_embed.0", time_dim, model_channels)
    param("time_embed.2", time_dim, time_dim)
    param("input_blocks.0.0", model_channels, 4, 3, 3)
    chans, ch, k = [model_channels], model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            resblock(f"input_blocks.{k}.0", ch, mult * model_channels)
            ch = mult * model_channels
            if level in attention_levels:
                transformer(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if level != len(channel_mult) - 1:
            param(f"input_blocks.{k}.0.op", ch, ch, 3, 3)
            chans.append(ch)
            k += 1
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    k = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            resblock(f"output_blocks.{k}.0", ch + chans.pop(), mult * model_channels)
            ch = mult * model_channels
            layer = 1
            if level in attention_levels:
                transformer(f"output_blocks.{k}.1", ch)
                layer = 2
            if level and i == num_res_blocks:
                param(f"output_blocks.{k}.{layer}.conv", ch, ch, 3, 3)
            k += 1
    param("out.0", ch)
    param("out.2", 4, model_channels, 3, 3)
    return shapes


def full_size_single_file_on_meta() -> dict[str, torch.Tensor]:
    """Every tensor of ``v1-5-pruned-emaonly`` (U-Net, VAE, text encoder), as meta tensors."""
    text = transformers.CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
    )
    with torch.device("meta"):
        text_state = transformers.CLIPTextModel(text).state_dict()
        state = {f"model.diffusion_model.{k}": torch.empty(s) for k, s in compvis_unet_shapes().items()}
        state |= {f"first_stage_model.{k}": torch.empty(s) for k, s in compvis_vae_shapes(128, (1, 2, 4, 4), 2).items()}
        state |= {
            f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v for k, v in text_state.items()
        }
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.empty(1, 77, dtype=torch.long)
    return state


def test_full_size_single_file_maps_completely() -> None:
    state = full_size_single_file_on_meta()
    assert len(state) == 686 + 248 + 197  # the tensor count of v1-5-pruned-emaonly.safetensors
    # through the loader itself: every key mapped, every shape checked, nothing allocated
    models = models_from_single_file(state, source=Path("v1-5-pruned-emaonly.safetensors"), dtype=torch.float16)
    assert models.unet.config == SDUNetConfig()
    assert models.vae.config == AutoencoderKLConfig()
    assert models.text_encoder.config == CLIPTextConfig()
    counts = [sum(p.numel() for p in m.parameters()) for m in (models.unet, models.vae, models.text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    for module in (models.unet, models.vae, models.text_encoder):
        assert {p.device.type for p in module.parameters()} == {"meta"}
        assert {p.dtype for p in module.parameters()} == {torch.float16}

    # and the U-Net map alone, both ways, key for key against the constructors' shapes
    compvis = {k.removeprefix("model.diffusion_model."): v for k, v in state.items() if k.startswith("model.")}
    with torch.device("meta"):
        ours = {k: v.shape for k, v in SDUNet().state_dict().items()}
    mapped = {k: v.shape for k, v in unet_state_from_compvis(compvis, SDUNetConfig()).items()}
    assert sorted(set(ours) - set(mapped)) == [] and sorted(set(mapped) - set(ours)) == []
    assert mapped == ours
    back = unet_state_to_compvis(unet_state_from_compvis(compvis, SDUNetConfig()), SDUNetConfig())
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in compvis.items()}
