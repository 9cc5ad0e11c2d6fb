"""Checkpoints that are not SD-1.x text-to-image are named and refused; broken files give one
clear error, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sd_tiny import write_single_file

from catdiff.errors import UserError
from catdiff.sd.checkpoint import load_stable_diffusion

diffusers = pytest.importorskip("diffusers")


def small(*shape: int) -> torch.Tensor:
    return torch.zeros(shape)


def sd1_like(in_channels: int = 4, context_dim: int = 768) -> dict[str, torch.Tensor]:
    """A few tensors in the SD-1.x single-file layout: enough for the family checks, which run first."""
    return {
        "model.diffusion_model.input_blocks.0.0.weight": small(8, in_channels, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": small(8, context_dim),
        "first_stage_model.decoder.conv_out.bias": small(3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": small(8),
    }


FAMILIES = {
    "SD-2.x": {
        **{k: v for k, v in sd1_like(context_dim=1024).items() if not k.startswith("cond_stage_model")},
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": small(12, 4),
        "cond_stage_model.model.text_projection": small(4, 4),
    },
    "SD-2.x ": sd1_like(context_dim=1024),  # (the U-Net alone tells, whatever the text encoder)
    "SDXL": {
        "model.diffusion_model.input_blocks.0.0.weight": small(8, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": small(8, 16),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": small(8),
        "conditioner.embedders.1.model.text_projection": small(4, 4),
        "first_stage_model.decoder.conv_out.bias": small(3),
    },
    "inpainting": sd1_like(in_channels=9),
    "8 input channels": sd1_like(in_channels=8),  # instruct-pix2pix
}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_other_families_are_named(tmp_path: Path, family: str, suffix: str) -> None:
    path = write_single_file(tmp_path / f"model{suffix}", FAMILIES[family])
    with pytest.raises(UserError, match=rf"is (an? )?.*{family.strip()}.*SD-1\.x text-to-image checkpoints only"):
        load_stable_diffusion(path)


def diffusers_folder(root: Path, index: dict, unet: dict, scheduler: dict | None = None) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **unet}))
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


@pytest.mark.parametrize(
    ("index", "unet", "scheduler", "family"),
    [
        ({"_class_name": "StableDiffusionXLPipeline"}, {"addition_embed_type": "text_time"}, None, "SDXL"),
        ({"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 1024, "use_linear_projection": True}, None, "SD-2.x"),
        ({"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 768}, {"prediction_type": "v_prediction"}, "v-prediction"),
        ({"_class_name": "StableDiffusionInpaintPipeline"}, {"in_channels": 9, "cross_attention_dim": 768}, None, "inpainting"),
    ],
)  # fmt: skip
def test_other_family_folders_are_named(tmp_path: Path, index, unet, scheduler, family: str) -> None:
    folder = diffusers_folder(tmp_path / "pipe", index, unet, scheduler)
    with pytest.raises(UserError, match=rf"{family}.*SD-1\.x text-to-image checkpoints only"):
        load_stable_diffusion(folder)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file_is_a_clear_error(tmp_path: Path, suffix: str, keep: float) -> None:
    state = {**sd1_like(), "model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3)}
    path = write_single_file(tmp_path / f"model{suffix}", state)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match=f"model{suffix}"):
        load_stable_diffusion(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        load_stable_diffusion(tmp_path / "missing.ckpt")
    vae_only = write_single_file(tmp_path / "vae.safetensors", {"first_stage_model.decoder.conv_out.bias": small(3)})
    with pytest.raises(UserError, match=r"no model\.diffusion_model\.\* tensors"):
        load_stable_diffusion(vae_only)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="model_index.json"):
        load_stable_diffusion(tmp_path / "folder")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown weights format"):
        load_stable_diffusion(tmp_path / "weights.npz")


def test_missing_key_is_named_as_the_file_spells_it(tmp_path: Path) -> None:
    from sd_tiny import compvis_state, tiny_reference_pipeline

    state = compvis_state(tiny_reference_pipeline(tmp_path))
    bias = state.pop("model.diffusion_model.output_blocks.1.0.emb_layers.1.bias")
    del state["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"]
    path = write_single_file(tmp_path / "broken.safetensors", state)
    with pytest.raises(
        UserError, match=r"missing keys \['model\.diffusion_model\.output_blocks\.1\.0\.emb_layers\.1\.bias'\]"
    ):
        load_stable_diffusion(path)
    state["model.diffusion_model.output_blocks.1.0.emb_layers.1.bias"] = bias
    path = write_single_file(tmp_path / "broken.safetensors", state)
    with pytest.raises(
        UserError,
        match=r"text encoder.*missing keys \['cond_stage_model\.transformer\.text_model\.encoder\.layers\.1\.mlp\.fc2\.weight'\]",
    ):
        load_stable_diffusion(path)
