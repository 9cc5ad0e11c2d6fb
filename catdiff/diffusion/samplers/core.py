"""The sampler registry, the step callback, and the checks every sampler shares.

Every sampler is a plain function in the style of k-diffusion::

    sample_x(denoise, x, sigmas, *, generator=None, callback=None, <its own options>) -> x

- ``denoise(x, sigma) -> x0`` works on the variance-exploding (VE) sample ``x = x0 + sigma * eps``
  (Karras et al. 2022); :class:`catdiff.diffusion.denoiser.Denoiser` wraps a VP network, and the
  condition (class labels, a prompt, guidance) is already inside it.
- ``sigmas`` is a 1-D descending grid of noise levels, normally ending in 0; ``len(sigmas) - 1``
  steps run. ``x`` is the start sample at ``sigmas[0]``, VE-scaled (:func:`~catdiff.diffusion.schedule.vp_to_ve`
  of unit-variance noise); the sampler returns the sample at ``sigmas[-1]``.
- Every random draw is :func:`~catdiff.diffusion.noise.standard_normal` of ``x``'s shape from
  ``generator``: one generator, or one per image, drawn in step order.
- ``callback`` is called after every step with a :class:`StepInfo`.

A sampler's own options are keyword-only parameters; :func:`check_options` refuses any other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import torch
from torch import Tensor

from catdiff.diffusion.noise import Generators, standard_normal
from catdiff.errors import UserError

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
Sampler = Callable[..., Tensor]


class StepInfo(TypedDict):
    """What a sampler's ``callback`` receives after step ``i`` (0-based)."""

    i: int
    x: Tensor  # the sample after the step, at noise level sigma_next (VE scale)
    sigma: Tensor  # the noise level the step started from; denoise saw x at this level
    sigma_next: Tensor  # the noise level of the new x
    denoised: Tensor  # the x0 estimate made at sigma


Callback = Callable[[StepInfo], Any]

SAMPLERS: dict[str, Sampler] = {}
#: Network evaluations per step of each sampler, at most (what a step costs).
EVALUATIONS_PER_STEP: dict[str, int] = {}
_COMMON = ("generator", "callback")


def register_sampler(name: str, evaluations_per_step: int = 1) -> Callable[[Sampler], Sampler]:
    """Decorator: add a sampler function to :data:`SAMPLERS` under ``name``, with the network
    evaluations one of its steps takes at most."""

    def add(fn: Sampler) -> Sampler:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        SAMPLERS[name] = fn
        EVALUATIONS_PER_STEP[name] = evaluations_per_step
        return fn

    return add


def get_sampler(name: str) -> Sampler:
    """The sampler function registered as ``name``; a :class:`UserError` names the known ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}") from None


def sampler_options(name: str) -> tuple[str, ...]:
    """The options sampler ``name`` accepts: its keyword-only parameters besides generator and callback."""
    parameters = inspect.signature(get_sampler(name)).parameters.values()
    return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in _COMMON)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options that sampler ``name`` does not take, naming them and the ones it does."""
    accepted = sampler_options(name)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        takes = f"it accepts {', '.join(accepted)}" if accepted else "it takes no options"
        raise UserError(f"unknown option {unknown[0]!r} for sampler {name}; {takes}")


def check_sigmas(sigmas: Tensor) -> Tensor:
    """A 1-D, strictly descending grid of at least 2 positive levels, except for a final 0."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 noise levels, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly descending")
    if not bool(sigmas[-2] > 0) or bool(sigmas[-1] < 0):
        raise ValueError("sigmas must be positive, except for a final 0")
    return sigmas


def draw_like(x: Tensor, generator: Generators | None) -> Tensor:
    """One standard-normal draw shaped like ``x`` (per image when given one generator per image)."""
    return standard_normal(x.shape, generator, device=x.device, dtype=x.dtype)
