"""Denoisers and autoencoders, each built from a small config dataclass.

``build_model({"type": "unet", **fields})`` builds a model from the dict that a model folder
stores as its config (:mod:`catdiff.io.checkpoints` reads and writes it); ``model_config(model)``
gives that dict back. Nothing here opens a file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from catdiff.models.unet import UNet, UNetConfig
from catdiff.models.unet_class import NULL_CLASS, ClassUNet, ClassUNetConfig
from catdiff.models.unet_seed import SeedUNet, SeedUNetConfig
from catdiff.models.vae import AutoencoderKL, AutoencoderKLConfig

__all__ = [
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "ClassUNet",
    "ClassUNetConfig",
    "NULL_CLASS",
    "SeedUNet",
    "SeedUNetConfig",
    "UNet",
    "UNetConfig",
    "build_model",
    "model_config",
]

_MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "unet": (UNet, UNetConfig),
    "seed_unet": (SeedUNet, SeedUNetConfig),
    "class_unet": (ClassUNet, ClassUNetConfig),
    AutoencoderKL.kind: (AutoencoderKL, AutoencoderKLConfig),
}


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a model from ``{"type": name, **config fields}``; JSON lists become tuples."""
    fields = dict(config)
    kind = fields.pop("type", None)
    if kind not in _MODELS:
        raise ValueError(f"unknown model type {kind!r}; choose one of {sorted(_MODELS)}")
    model_cls, config_cls = _MODELS[kind]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {kind} config fields {unknown}; known: {sorted(known)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return model_cls(config_cls(**fields))


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``build_model`` dict of a model (tuples stay tuples here; JSON makes them lists)."""
    for kind, (model_cls, _) in _MODELS.items():
        if type(model) is model_cls:
            return {"type": kind, **dataclasses.asdict(model.config)}
    raise ValueError(f"{type(model).__name__} is not one of {sorted(_MODELS)}")
