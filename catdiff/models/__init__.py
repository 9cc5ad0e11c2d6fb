"""Denoisers and autoencoders, each built from a small config dataclass.

``build_model({"type": "unet", **fields})`` builds a model from the dict that a model folder
stores as its config (:mod:`catdiff.io.checkpoints` reads and writes it); ``model_config(model)``
gives that dict back. Nothing here opens a file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from torch import nn

from catdiff.errors import UserError
from catdiff.models.unet import UNet, UNetConfig
from catdiff.models.unet_class import NULL_CLASS, ClassUNet, ClassUNetConfig
from catdiff.models.unet_seed import SeedUNet, SeedUNetConfig
from catdiff.models.vae import AutoencoderKL, AutoencoderKLConfig
from catdiff.validation import validate

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
    "canonical_config",
    "model_config",
    "model_settings",
]

_MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "unet": (UNet, UNetConfig),
    "seed_unet": (SeedUNet, SeedUNetConfig),
    "class_unet": (ClassUNet, ClassUNetConfig),
    AutoencoderKL.kind: (AutoencoderKL, AutoencoderKLConfig),
}


def model_settings(config: dict[str, Any]) -> tuple[type[nn.Module], Any]:
    """The model class of ``{"type": name, **config fields}`` and its config dataclass, checked
    strictly (:mod:`catdiff.validation`): a wrong name, key, type or value is a :class:`UserError`."""
    if not isinstance(config, dict):
        raise UserError(f'a model config is a JSON object with a "type", got {config!r}')
    fields = dict(config)
    kind = fields.pop("type", None)
    if kind not in _MODELS:
        raise UserError(f"unknown model type {kind!r}; choose one of {', '.join(sorted(_MODELS))}")
    model_cls, config_cls = _MODELS[kind]
    return model_cls, validate(config_cls, fields, f"{kind} model config")


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every field spelled out (defaults too, tuples as lists), so that two
    configs of the same model compare equal whatever fields were left out when written."""
    _, settings = model_settings(config)
    fields = {
        name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(settings).items()
    }
    return {"type": config["type"], **fields}


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a model from ``{"type": name, **config fields}`` (:func:`model_settings`)."""
    model_cls, settings = model_settings(config)
    try:
        return model_cls(settings)
    except (ValueError, RuntimeError) as error:  # sizes the layers cannot take (torch's own checks)
        raise UserError(f"{config['type']} model config: {error}") from None


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``build_model`` dict of a model (tuples stay tuples here; JSON makes them lists)."""
    for kind, (model_cls, _) in _MODELS.items():
        if type(model) is model_cls:
            return {"type": kind, **dataclasses.asdict(cast(Any, model).config)}
    raise ValueError(f"{type(model).__name__} is not one of {sorted(_MODELS)}")
