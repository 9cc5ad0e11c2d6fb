"""Conditions: what a network is conditioned on for a batch of images, and how it is guided.

A condition is one small object with one protocol (:class:`Condition`): it binds itself into
the network (``guide(network) -> (x_t, t) -> output``) for the images it covers, and gives the
condition of a slice of those images (``take``), so a pipeline can batch images freely.
:class:`Unconditional` binds nothing; :class:`GuidedCondition` holds class labels or text
states, with their null counterparts, and guides by classifier-free guidance.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").

One network learns the conditional and the unconditional model at once: during training the
condition is replaced by a null one with probability ``p_uncond`` (sec. 3.2, alg. 1). At sampling
the two predictions are mixed, ``eps = eps_u + w (eps_c - eps_u)`` (eq. 6, written with
``w = 1 + w_paper``): ``w = 1`` is the conditional model, ``w = 0`` the unconditional one, and
``w > 1`` pushes samples towards what the condition makes likely.

Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself").

An unconditional model is guided by a weaker version of itself (smaller, or trained for less
time): ``D = D_bad + w (D_good - D_bad)`` (eq. 2 with ``D_0 = D_bad``), which pulls samples away
from the errors the two models share towards the data, without the loss of variety that
classifier-free guidance brings. Optionally only over an interval of noise levels (Kynkäänniemi
et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from catdiff.diffusion.denoiser import Network

__all__ = [
    "AutoGuidance",
    "Autoguided",
    "ClassifierFreeGuidance",
    "Condition",
    "GuidedCondition",
    "Unconditional",
    "drop_labels",
]


class Condition(Protocol):
    """What the images of one call are conditioned on."""

    def guide(self, network: nn.Module) -> Network:
        """The network function ``(x_t, t) -> output`` for these images."""
        ...

    def take(self, index: slice) -> Condition:
        """The condition of images ``index`` of the call."""
        ...


@dataclass(frozen=True)
class Unconditional:
    """No condition: the network as it is."""

    def guide(self, network: nn.Module) -> Network:
        return network

    def take(self, index: slice) -> Unconditional:
        return self


@dataclass(frozen=True)
class GuidedCondition:
    """One condition per image (class labels ``[n]`` or text states ``[n, L, C]``) with its null
    counterpart, mixed by classifier-free guidance at ``scale`` (1: the conditional model)."""

    condition: Tensor
    uncondition: Tensor
    scale: float = 1.0

    def guide(self, network: nn.Module) -> Network:
        return ClassifierFreeGuidance(network, self.condition, self.uncondition, self.scale)

    def take(self, index: slice) -> GuidedCondition:
        return GuidedCondition(self.condition[index], self.uncondition[index], self.scale)


def drop_labels(labels: Tensor, p_uncond: float, null: int, generator: torch.Generator) -> Tensor:
    """``labels`` with each one replaced by ``null`` with probability ``p_uncond`` (one
    ``torch.rand`` of ``len(labels)`` draws from ``generator``)."""
    dropped = torch.rand(len(labels), generator=generator) < p_uncond
    return torch.where(dropped, torch.full_like(labels, null), labels)


def _to(condition: Tensor, dtype: torch.dtype) -> Tensor:
    """Float conditions (text states) take the network's dtype; labels stay integers."""
    return condition.to(dtype) if condition.is_floating_point() else condition


class ClassifierFreeGuidance:
    """The guided prediction ``out_u + scale * (out_c - out_u)`` of ``network(x_t, t, condition)``
    from one call on the batch doubled, unconditional half first.

    ``condition`` and ``uncondition`` have the batch as their first dimension: text encoder states
    for the prompts and the negative prompts, or class labels and null labels. At ``scale == 1``
    this is the conditional prediction, from one plain call. Float inputs are cast to the
    network's dtype; the prediction comes back in float32.
    """

    def __init__(self, network: nn.Module, condition: Tensor, uncondition: Tensor, scale: float) -> None:
        self.network, self.scale = network, scale
        weight = next(network.parameters())
        self.dtype = weight.dtype
        self.condition = _to(condition, self.dtype).to(weight.device)
        self.both_conditions = _to(torch.cat([uncondition, condition]), self.dtype).to(weight.device)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.scale == 1:
            return self.network(x_t.to(self.dtype), t, self.condition).float()
        both = self.network(torch.cat([x_t, x_t]).to(self.dtype), t.repeat(2), self.both_conditions)
        out_u, out_c = both.float().chunk(2)
        return out_u + self.scale * (out_c - out_u)


@dataclass(frozen=True)
class Autoguided:
    """Unconditional images guided by ``guide``, a weaker network of the same prediction target,
    at ``scale`` (1: the model alone), at timesteps ``t_low <= t <= t_high`` only."""

    guide_network: nn.Module
    scale: float
    t_low: float = float("-inf")
    t_high: float = float("inf")

    def guide(self, network: nn.Module) -> Network:
        if self.scale == 1:
            return network
        return AutoGuidance(network, self.guide_network, self.scale, (self.t_low, self.t_high))

    def take(self, index: slice) -> Autoguided:
        return self


class AutoGuidance:
    """``bad + scale * (good - bad)`` of two networks' outputs where ``t`` lies in ``interval``,
    ``good`` elsewhere (the guide is not run for a batch that lies wholly outside it).

    The outputs are mixed as they are: for the eps, x0 and v targets alike this is the same mix
    of the two models' x0 estimates, as long as both networks predict the same target.
    """

    def __init__(self, good: nn.Module, bad: nn.Module, scale: float, interval: tuple[float, float]) -> None:
        self.good, self.bad, self.scale, self.interval = good, bad, scale, interval
        self.dtype = next(good.parameters()).dtype

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        x_t = x_t.to(self.dtype)
        out_good = self.good(x_t, t).float()
        inside = (t >= self.interval[0]) & (t <= self.interval[1])
        if not inside.any():
            return out_good
        out_bad = self.bad(x_t, t).float()
        guided = out_bad + self.scale * (out_good - out_bad)
        return torch.where(inside.view(-1, *[1] * (x_t.ndim - 1)), guided, out_good)
