"""Stable Diffusion 1.x checkpoints -> our U-Net, VAE, text encoder and noise schedule.

Two layouts are read (Rombach et al. 2022 published the first, diffusers the second):

- a CompVis single file, ``.safetensors`` or ``.ckpt`` (``v1-5-pruned-emaonly``, and fine-tunes
  in the same layout): ``model.diffusion_model.*`` (U-Net), ``first_stage_model.*`` (VAE),
  ``cond_stage_model.transformer.*`` (CLIP text encoder); every other entry (EMA copies, the
  schedule's buffers) is ignored;
- a diffusers folder: ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/`` (each part's
  weights as safetensors, or as the ``.bin`` of ``save_pretrained(safe_serialization=False)``,
  read weights-only) and, when present, ``scheduler/scheduler_config.json`` for the noise
  schedule; its ``tokenizer/`` is read by :mod:`catdiff.sd.tokenizer`.

Memory: modules are built on the meta device and take the file's tensors themselves
(:func:`catdiff.io.state_dicts.load_state_strict`); safetensors and ``.ckpt`` files are memory-mapped,
so the weights are read once, into the model. ``dtype`` casts them (fp16 halves the memory).

Checkpoints of other families are recognised and refused with a :class:`UserError` that names
them: SD-2.x (OpenCLIP text encoder, 1024-wide cross-attention), SDXL (two text encoders,
``conditioner.embedders``, ``label_emb``), inpainting and other U-Nets with extra input channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catdiff.diffusion.schedule import NoiseSchedule
from catdiff.errors import UserError
from catdiff.io.json_files import read_json
from catdiff.io.state_dicts import load_state_strict, read_state_file
from catdiff.io.vae import COMPVIS_PREFIX, load_vae, vae_from_state
from catdiff.models.vae import AutoencoderKL
from catdiff.sd.text_encoder import (
    CLIPTextConfig,
    CLIPTextEncoder,
    clip_config_from_state,
    clip_state_from_transformers,
)
from catdiff.sd.unet import SDUNet, SDUNetConfig
from catdiff.sd.unet_keys import (
    compvis_key_namer,
    config_from_diffusers,
    infer_config,
    unet_state_from_compvis,
)

__all__ = ["SD1_SCHEDULE", "StableDiffusionModels", "load_stable_diffusion", "models_from_single_file"]

#: SD-1.x's training schedule: scaled-linear betas from 0.00085 to 0.012 over 1000 steps.
SD1_SCHEDULE = NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012)
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = COMPVIS_PREFIX
TEXT_PREFIX = "cond_stage_model.transformer."
DIFFUSERS_WEIGHTS = {
    "unet": (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
    ),
    "text_encoder": ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"),
}
REFUSAL = "catdiff runs SD-1.x text-to-image checkpoints only"


@dataclass
class StableDiffusionModels:
    """The networks of an SD-1.x checkpoint, in eval mode, and the schedule it was trained with."""

    unet: SDUNet
    vae: AutoencoderKL
    text_encoder: CLIPTextEncoder
    schedule: NoiseSchedule


def load_stable_diffusion(path: str | Path, *, dtype: torch.dtype = torch.float32) -> StableDiffusionModels:
    """The U-Net, VAE and text encoder of a CompVis single file or a diffusers folder, in ``dtype``."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"checkpoint not found: {path} (give an SD-1.x .safetensors/.ckpt single file or a diffusers "
            "folder; catdiff downloads nothing)"
        )
    if path.is_dir():
        return _load_diffusers_folder(path, dtype)
    return models_from_single_file(read_state_file(path), source=path, dtype=dtype)


# --- families -----------------------------------------------------------------------------------


def _other_family(keys: set[str], in_channels: int | None, context_dim: int | None) -> str | None:
    """What a checkpoint is when it is not SD-1.x text-to-image, from its keys and two shapes."""
    sdxl_keys = ("conditioner.embedders.", f"{UNET_PREFIX}label_emb.")
    if any(k.startswith(sdxl_keys) for k in keys) or context_dim == 2048:
        return "an SDXL checkpoint (two text encoders and size conditioning)"
    if any(k.startswith("cond_stage_model.model.") for k in keys) or context_dim == 1024:
        return "an SD-2.x checkpoint (OpenCLIP ViT-H text encoder, 1024-wide cross-attention)"
    if in_channels == 9:
        return "an inpainting checkpoint (its U-Net takes 9 input channels: latents, mask, masked image)"
    if in_channels is not None and in_channels != 4:
        return f"not a text-to-image checkpoint: its U-Net takes {in_channels} input channels, not 4"
    return None


def _refuse_other_family(source: Path, family: str | None) -> None:
    if family is not None:
        raise UserError(f"{source} is {family}; {REFUSAL}")


def _models(
    source: Path, unet: SDUNet, vae: AutoencoderKL, text_encoder: CLIPTextEncoder, schedule: NoiseSchedule
) -> StableDiffusionModels:
    """The loaded networks, once the U-Net is known to read what the text encoder writes."""
    context_dim, text_width = unet.config.cross_attention_dim, text_encoder.config.width
    if context_dim != text_width:
        raise UserError(
            f"{source}: the U-Net cross-attends to {context_dim}-wide text features, the text encoder gives {text_width}"
        )
    return StableDiffusionModels(unet.eval(), vae.eval(), text_encoder.eval(), schedule)


# --- CompVis single files -------------------------------------------------------------------


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def models_from_single_file(
    state: Mapping[str, Tensor], *, source: Path, dtype: torch.dtype = torch.float32
) -> StableDiffusionModels:
    """The networks of a CompVis single file's tensors (which may be on the meta device: then
    so are the networks, and nothing is allocated)."""
    unet_state = _strip(state, UNET_PREFIX)
    conv_in = unet_state.get("input_blocks.0.0.weight")
    to_k = unet_state.get("middle_block.1.transformer_blocks.0.attn2.to_k.weight")
    _refuse_other_family(
        source,
        _other_family(
            set(state),
            int(conv_in.shape[1]) if conv_in is not None else None,
            int(to_k.shape[1]) if to_k is not None else None,
        ),
    )
    vae_state, text_state = _strip(state, VAE_PREFIX), clip_state_from_transformers(_strip(state, TEXT_PREFIX))
    for prefix, part in ((UNET_PREFIX, unet_state), (VAE_PREFIX, vae_state), (TEXT_PREFIX, text_state)):
        if not part:
            raise UserError(f"{source} has no {prefix}* tensors: not a full SD-1.x checkpoint")

    unet_config = infer_config(unet_state, source=source)
    with torch.device("meta"):
        unet = SDUNet(unet_config)
    load_state_strict(
        unet,
        unet_state_from_compvis(unet_state, unet_config),
        source,
        what="the SD-1.x U-Net",
        name=compvis_key_namer(unet_config),
        dtype=dtype,
        assign=True,
    )
    vae = vae_from_state(vae_state, source=source, prefix=VAE_PREFIX, dtype=dtype)
    text_config = _clip_config(text_state, source)
    text_encoder = _text_encoder(text_state, text_config, source, dtype, name=lambda k: f"{TEXT_PREFIX}text_model.{k}")
    return _models(source, unet, vae, text_encoder, SD1_SCHEDULE)


def _clip_config(state: Mapping[str, Tensor], source: Path) -> CLIPTextConfig:
    try:
        return clip_config_from_state(state)
    except (KeyError, ValueError) as error:
        raise UserError(f"{source}: the text encoder's weights have no usable shape ({error})") from None


def _text_encoder(
    state: Mapping[str, Tensor], config: CLIPTextConfig, source: Path, dtype: torch.dtype, name: Callable[[str], str]
) -> CLIPTextEncoder:
    with torch.device("meta"):
        encoder = CLIPTextEncoder(config)
    return load_state_strict(encoder, state, source, what="the CLIP text encoder", name=name, dtype=dtype, assign=True)


# --- diffusers folders ----------------------------------------------------------------------


def _weights_file(folder: Path, part: str) -> Path:
    for name in DIFFUSERS_WEIGHTS[part]:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder} has no weights file (expected {DIFFUSERS_WEIGHTS[part][0]})")


def _folder_family(folder: Path, index: Mapping[str, Any], unet: Mapping[str, Any]) -> str | None:
    """What a diffusers folder is when it is not SD-1.x text-to-image, from its configs."""
    pipeline = str(index.get("_class_name", ""))
    if "XL" in pipeline or "text_encoder_2" in index or unet.get("addition_embed_type") == "text_time":
        return "an SDXL pipeline (two text encoders and size conditioning)"
    if unet.get("use_linear_projection") or unet.get("upcast_attention"):
        return "an SD-2.x pipeline (linear attention projections)"
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if (
        scheduler.is_file()
        and read_json(scheduler, what="scheduler config").get("prediction_type", "epsilon") != "epsilon"
    ):
        return "a v-prediction pipeline (SD-2.x 768-v and kin)"
    if "Inpaint" in pipeline:
        return "an inpainting pipeline"
    return _other_family(set(), unet.get("in_channels", 4), unet.get("cross_attention_dim", 1280))


def _schedule_from_diffusers(file: Path) -> NoiseSchedule:
    if not file.is_file():
        return SD1_SCHEDULE
    config = read_json(file, what="scheduler config")
    kinds = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
    kind = kinds.get(config.get("beta_schedule", "scaled_linear"))
    if kind is None or config.get("trained_betas") is not None:
        raise UserError(f"{file}: beta schedule {config.get('beta_schedule')!r} is not supported")
    return NoiseSchedule(
        kind,
        int(config.get("num_train_timesteps", 1000)),
        float(config.get("beta_start", 0.00085)),
        float(config.get("beta_end", 0.012)),
    )


def _clip_config_from_transformers(config: Mapping[str, Any], source: Path) -> CLIPTextConfig:
    """Our config from a transformers ``CLIPTextConfig`` ``config.json``."""
    if config.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise UserError(f"{source}: a text encoder with {config['hidden_act']} is not SD-1.x's CLIP")
    try:
        return CLIPTextConfig(
            vocab_size=int(config.get("vocab_size", 49408)),
            width=int(config.get("hidden_size", 512)),
            layers=int(config.get("num_hidden_layers", 12)),
            heads=int(config.get("num_attention_heads", 8)),
            mlp_width=int(config.get("intermediate_size", 2048)),
            context_length=int(config.get("max_position_embeddings", 77)),
            norm_eps=float(config.get("layer_norm_eps", 1e-5)),
        )
    except (TypeError, ValueError) as error:
        raise UserError(f"{source}: unusable CLIPTextConfig: {error}") from None


def _load_diffusers_folder(folder: Path, dtype: torch.dtype) -> StableDiffusionModels:
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    index = read_json(folder / "model_index.json", what="diffusers pipeline index")
    unet_config_file = folder / "unet" / "config.json"
    unet_raw = read_json(unet_config_file, what="U-Net config")
    _refuse_other_family(folder, _folder_family(folder, index, unet_raw))

    unet_config: SDUNetConfig = config_from_diffusers(unet_raw, source=unet_config_file)
    with torch.device("meta"):
        unet = SDUNet(unet_config)
    unet_file = _weights_file(folder / "unet", "unet")
    load_state_strict(unet, read_state_file(unet_file), unet_file, what="the SD-1.x U-Net", dtype=dtype, assign=True)

    text_folder = folder / "text_encoder"
    text_config_file = text_folder / "config.json"
    text_config = _clip_config_from_transformers(
        read_json(text_config_file, what="text encoder config"), text_config_file
    )
    text_file = _weights_file(text_folder, "text_encoder")
    text_state = clip_state_from_transformers(read_state_file(text_file))
    text_encoder = _text_encoder(text_state, text_config, text_file, dtype, name=lambda k: k)

    vae = load_vae(folder / "vae", dtype=dtype)
    schedule = _schedule_from_diffusers(folder / "scheduler" / "scheduler_config.json")
    return _models(folder, unet, vae, text_encoder, schedule)
