"""Exponential moving average of model weights with warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, max_decay: float = 0.9999, power: float = 2 / 3) -> float:
    """Decay after ``step`` updates: ``1 - (1 + step)^-power``, capped at ``max_decay``.

    The warm-up lets early averages forget the random initialisation quickly
    (Karras et al. 2024 discuss the same power-law profile; power 2/3 suits long runs,
    3/4 short ones).
    """
    return min(max_decay, 1 - (1 + step) ** -power)


class EMA:
    """A frozen float32 copy of a model whose weights track the model's by EMA."""

    def __init__(self, model: nn.Module, *, max_decay: float = 0.9999, power: float = 2 / 3) -> None:
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.max_decay = max_decay
        self.power = power

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = ema_decay(step, self.max_decay, self.power)
        ema_params = list(self.model.parameters())
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
