"""A class-conditional latent-diffusion U-Net: the SD-1.x U-Net cross-attending to a class token.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3.3:
the spatial transformers of the U-Net attend to ``tau_theta(y)``, an embedding of the
condition; for class labels ``tau_theta`` is a learned table and the context one token.
The table has one row more than there are classes: the null class of classifier-free
guidance (Ho & Salimans 2022), asked for with the label :data:`NULL_CLASS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from catdiff.sd.unet import SDUNet, SDUNetConfig

__all__ = ["NULL_CLASS", "ClassUNet", "ClassUNetConfig"]

NULL_CLASS = -1


@dataclass
class ClassUNetConfig(SDUNetConfig):
    """An :class:`SDUNetConfig` (whose defaults are SD-1.x's sizes) and the number of classes."""

    num_classes: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")


class ClassUNet(nn.Module):
    """``(x_t [B, C, h, w], t [B], labels [B] or None) -> prediction [B, C, h, w]``.

    Labels are ``0 .. num_classes - 1`` or :data:`NULL_CLASS`; no labels means all null (the
    unconditional model).
    """

    def __init__(self, config: ClassUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClassUNetConfig()
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.cross_attention_dim)
        self.unet = SDUNet(config)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            labels = torch.full((x_t.shape[0],), NULL_CLASS, device=x_t.device)
        rows = torch.where(labels == NULL_CLASS, self.num_classes, labels)
        context = self.class_embedding(rows)[:, None].to(x_t.dtype)
        return self.unet(x_t, t, context)
