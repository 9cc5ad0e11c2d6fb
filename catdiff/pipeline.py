"""Sampling: noise -> denoiser + schedule + sampler -> images. The library's one entry point."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from catdiff.checkpoints import load_state_strict, read_config, read_weights, resolve_model_folder
from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.objective import Prediction
from catdiff.diffusion.samplers import get_sampler
from catdiff.diffusion.schedule import NoiseSchedule, Spacing
from catdiff.errors import UserError
from catdiff.models import build_model

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Mixed precision for the network's evaluations; the sampler's own arithmetic stays fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class Pipeline:
    """A trained denoiser with everything needed to sample it."""

    network: nn.Module
    schedule: NoiseSchedule
    prediction: Prediction
    sample_shape: tuple[int, ...]
    spacing: Spacing = "trailing"

    @classmethod
    def from_config(cls, config: dict[str, Any], network: nn.Module) -> Pipeline:
        diffusion = config["diffusion"]
        return cls(
            network=network,
            schedule=NoiseSchedule.from_config(diffusion["schedule"]),
            prediction=diffusion["prediction"],
            sample_shape=tuple(config["sample_shape"]),
        )

    @classmethod
    def from_folder(cls, path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> Pipeline:
        """Load a model folder, a training checkpoint, or the newest checkpoint of a run."""
        folder = resolve_model_folder(Path(path))
        config = read_config(folder)
        try:
            network = build_model(config["model"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"bad model config in {folder}: {error}") from None
        load_state_strict(network, read_weights(folder, ema=ema), folder)
        return cls.from_config(config, network.to(device).eval())

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def sigmas(self, steps: int) -> Tensor:
        return self.schedule.discrete_sigmas(steps, self.spacing)

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        *,
        steps: int = 50,
        sampler: str = "ddim",
        seed: int = 0,
        batch_size: int = 16,
        precision: Precision = "fp32",
        progress: bool | None = False,
        callback: Callable[..., None] | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        """``n`` samples as float NCHW in [-1, 1]; the same seed gives the same images.

        ``progress=None`` shows a bar only on a terminal.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        sample_fn = get_sampler(sampler)
        sigmas = self.sigmas(steps).to(self.device)
        generator = torch.Generator().manual_seed(seed)
        denoise = Denoiser(self.network, self.schedule, self.prediction)
        images = []
        with tqdm(total=n * steps, disable=None if progress is None else not progress, desc="sampling", unit="step", unit_scale=1 / n) as bar:

            def on_step(*args: Any, **kwargs: Any) -> None:
                bar.update(len(batch))
                if callback is not None:
                    callback(*args, **kwargs)

            for start in range(0, n, batch_size):
                batch = range(start, min(n, start + batch_size))
                noise = torch.randn(len(batch), *self.sample_shape, generator=generator).to(self.device)
                x = noise * (1 + sigmas[0] ** 2).sqrt().float()
                with autocast(self.device, precision):
                    x = sample_fn(denoise, x, sigmas, generator=generator, callback=on_step, **sampler_options)
                images.append(x.float().clamp(-1, 1))
        return torch.cat(images)
