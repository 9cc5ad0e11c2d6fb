"""The three parameterisations of a VP network's output, and loss weights, in one place.

The network sees ``x_t = alpha_t x_0 + std_t eps`` (``alpha_t = sqrt(alpha-bar_t)``, the VP noise
scale ``std_t = sqrt(1 - alpha-bar_t)``; see :mod:`catdiff.diffusion.schedule`) and predicts the
noise eps (Ho et al. 2020), the clean image x0, or the velocity ``v = alpha_t eps - std_t x_0``
(Salimans & Ho 2022, "Progressive distillation"). :class:`~catdiff.diffusion.denoiser.Denoiser`
uses both directions: :func:`training_target` for the loss, :func:`predicted_x0` for sampling.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from catdiff.errors import UserError

Prediction = Literal["eps", "v", "x0"]
PREDICTIONS: tuple[str, ...] = ("eps", "v", "x0")


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise UserError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def training_target(prediction: Prediction, x0: Tensor, eps: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """What the network should output for ``x_t`` built from ``x0`` and ``eps``."""
    _check(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return alpha * eps - std * x0


def predicted_x0(prediction: Prediction, output: Tensor, x_t: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """Recover the clean-image estimate from the network's output at ``x_t``."""
    _check(prediction)
    if prediction == "eps":
        return (x_t - std * output) / alpha
    if prediction == "x0":
        return output
    return alpha * x_t - std * output


def min_snr_weight(prediction: Prediction, snr: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023), expressed for each prediction target.

    The x0-space weight ``min(snr, gamma)`` becomes ``min(snr, gamma) / snr`` for an eps loss
    and ``min(snr, gamma) / (snr + 1)`` for a v loss.
    """
    _check(prediction)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped
