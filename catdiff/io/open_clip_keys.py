"""open_clip CLIP checkpoints -> transformers' ``CLIPModel``: the config and the key map, by rule.

open_clip (Ilharco et al. 2021, ``open_clip/model.py`` and ``transformer.py``) stores the ViT
image tower under ``visual.`` and the text tower at the top level, each block as
``transformer.resblocks.{i}`` with PyTorch's fused ``nn.MultiheadAttention``; transformers'
``CLIPModel`` holds the same computation (Radford et al. 2021) under other names:

==============================================  ==================================================
open_clip                                       transformers
==============================================  ==================================================
``visual.conv1.weight``                         ``vision_model.embeddings.patch_embedding.weight``
``visual.class_embedding``                      ``vision_model.embeddings.class_embedding``
``visual.positional_embedding``                 ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre`` / ``visual.ln_post``          ``vision_model.pre_layrnorm`` / ``.post_layernorm``
``visual.proj`` ``[width, embed]``              ``visual_projection.weight`` ``[embed, width]``
``token_embedding``                             ``text_model.embeddings.token_embedding``
``positional_embedding``                        ``text_model.embeddings.position_embedding.weight``
``ln_final``                                    ``text_model.final_layer_norm``
``text_projection`` ``[width, embed]``          ``text_projection.weight`` ``[embed, width]``
``logit_scale``                                 ``logit_scale``
``[visual.]transformer.resblocks.{i}.``         ``{vision,text}_model.encoder.layers.{i}.``
``....ln_1`` / ``ln_2``                         ``....layer_norm1`` / ``layer_norm2``
``....attn.in_proj_{weight,bias}`` (q; k; v)    ``....self_attn.{q,k,v}_proj.{weight,bias}``
``....attn.out_proj``                           ``....self_attn.out_proj``
``....mlp.c_fc`` / ``mlp.c_proj``               ``....mlp.fc1`` / ``mlp.fc2``
==============================================  ==================================================

Only the plain CLIP layout maps: a model config that asks for anything transformers' CLIP does
not compute (a timm or Hugging Face tower, a ResNet, layer scale, attentional pooling, other
pooling or norms) is refused by name. The activation is open_clip's ``quick_gelu`` flag (set for
OpenAI's pretrained weights), GELU otherwise. Text is pooled at the first end token, which is
open_clip's ``argmax`` pooling for CLIP's vocabulary (the end token has the highest id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from catdiff.errors import UserError
from catdiff.io.state_dicts import rename_key

__all__ = ["OPEN_CLIP_WEIGHTS", "clip_config_from_open_clip", "clip_state_from_open_clip"]

#: open_clip's weights files in a folder (``open_clip.push_to_hf_hub``'s names), first found wins.
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: open_clip's defaults (``CLIPVisionCfg`` / ``CLIPTextCfg``) for the fields a config may leave out.
_VISION_DEFAULTS = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
_TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
#: Options with no transformers counterpart, and the values that leave the computation plain CLIP.
_PLAIN = {
    "ls_init_value": (None,),
    "act_kwargs": (None,),
    "norm_kwargs": (None,),
    "final_ln_after_pool": (False,),
    "block_type": (None, "default"),
    **{
        flag: (False,)
        for flag in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")
    },
}
_VISION_PLAIN = {
    **_PLAIN,
    "timm_model_name": (None,),
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pos_embed_type": ("learnable",),
    "pool_type": ("tok",),
}
_TEXT_PLAIN = {
    **_PLAIN,
    "hf_model_name": (None,),
    "embed_cls": (False,),
    "no_causal_mask": (False,),
    "pool_type": ("argmax",),
    "proj_bias": (False,),
    "proj_type": ("linear",),
}

_NAMES = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
}
_MODULES = {
    "visual.ln_pre": "vision_model.pre_layrnorm",
    "visual.ln_post": "vision_model.post_layernorm",
    "token_embedding": "text_model.embeddings.token_embedding",
    "ln_final": "text_model.final_layer_norm",
}
_PROJECTIONS = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK_MODULES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_BLOCK = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")
_IN_PROJ = re.compile(r"attn\.in_proj_(weight|bias)")


def _square(value: Any, what: str, source: Path) -> int:
    """An open_clip size (an int, or ``[h, w]``) as the one int transformers takes."""
    sides = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(sides) != 2 or sides[0] != sides[1] or not isinstance(sides[0], int):
        raise UserError(f"{source}: {what} {value!r} is not square; transformers' CLIP takes square ones")
    return sides[0]


def _tower(cfg: Mapping[str, Any], name: str, defaults: Mapping[str, Any], plain: Mapping[str, tuple], source: Path):
    """A tower's settings with open_clip's defaults filled in, once none asks for more than plain CLIP."""
    for option, values in plain.items():
        if cfg.get(option, values[0]) not in values:
            raise UserError(
                f"{source}: open_clip's {name}.{option} = {cfg[option]!r} has no counterpart in transformers' CLIP"
            )
    settings = {**defaults, **{k: cfg[k] for k in defaults if k in cfg}}
    if isinstance(settings["layers"], (list, tuple)):
        raise UserError(f"{source}: a ResNet image tower (layers {settings['layers']}) is not a ViT CLIP")
    return settings


def clip_config_from_open_clip(model_cfg: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """transformers ``CLIPConfig`` keyword arguments for an open_clip ``model_cfg`` (the
    ``"model_cfg"`` of ``open_clip_config.json``); ``text_config.eos_token_id`` is for the caller
    to set to its tokenizer's end token."""
    if model_cfg.get("custom_text"):
        raise UserError(f"{source}: open_clip's custom text tower (custom_text) is not transformers' CLIP")
    if "embed_dim" not in model_cfg:
        raise UserError(f"{source}: the open_clip model config has no embed_dim")
    vision = _tower(model_cfg.get("vision_cfg", {}), "vision_cfg", _VISION_DEFAULTS, _VISION_PLAIN, source)
    text = _tower(model_cfg.get("text_cfg", {}), "text_cfg", _TEXT_DEFAULTS, _TEXT_PLAIN, source)
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    embed_dim = int(model_cfg["embed_dim"])
    return {
        "projection_dim": embed_dim,
        "vision_config": {
            "hidden_size": vision["width"],
            "intermediate_size": int(vision["width"] * vision["mlp_ratio"]),
            "num_hidden_layers": vision["layers"],
            "num_attention_heads": vision["width"] // vision["head_width"],
            "image_size": _square(vision["image_size"], "image size", source),
            "patch_size": _square(vision["patch_size"], "patch size", source),
            "hidden_act": act,
            "projection_dim": embed_dim,
        },
        "text_config": {
            "vocab_size": text["vocab_size"],
            "hidden_size": text["width"],
            "intermediate_size": int(text["width"] * text["mlp_ratio"]),
            "num_hidden_layers": text["layers"],
            "num_attention_heads": text["heads"],
            "max_position_embeddings": text["context_length"],
            "hidden_act": act,
            "projection_dim": embed_dim,
        },
    }


def _block_entries(key: str, block: re.Match[str], value: Tensor) -> dict[str, Tensor]:
    """The transformers entries of one open_clip residual-block tensor; the fused ``in_proj``
    (rows: q, then k, then v) splits into three projections."""
    tower, layer, part = "vision_model" if block[1] else "text_model", block[2], block[3]
    prefix = f"{tower}.encoder.layers.{layer}."
    fused = _IN_PROJ.fullmatch(part)
    if fused:
        return {
            f"{prefix}self_attn.{name}_proj.{fused[1]}": t for name, t in zip("qkv", value.chunk(3, dim=0), strict=True)
        }
    renamed = rename_key(part, _BLOCK_MODULES)
    return {key if renamed == part else prefix + renamed: value}


def clip_state_from_open_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip CLIP state dict in transformers' ``CLIPModel`` names (the table above).
    A key no rule covers keeps its name, so a strict load names it as the file spells it."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        block = _BLOCK.fullmatch(key)
        if block:
            out.update(_block_entries(key, block, value))
        elif key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = value.T.contiguous()
        else:
            out[_NAMES.get(key, rename_key(key, _MODULES))] = value
    return out
