"""What the trainer optimises: a task draws a step's randomness and turns a batch into a loss.

``draw`` sees the whole global batch and one generator per step, so every process and every
resumed run gets the same draws; ``loss`` sees one process's share of them, followed by the
batch's condition (class labels) where the trainer has one.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from catdiff.data.image_folder import uint8_to_float
from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.objective import Prediction
from catdiff.diffusion.schedule import NoiseSchedule
from catdiff.pipeline import Pipeline


class Task(Protocol):
    def draw(self, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, ...]: ...

    def loss(self, network: nn.Module, x0: Tensor, *draws: Tensor) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...

    def preview(self, network: nn.Module, data: Tensor, run_config: dict[str, Any], **options: Any) -> Tensor: ...


class DiffusionTask:
    """Denoising score matching on a VP schedule (Ho et al. 2020), with an eps, v or x0 target,
    optional min-SNR-gamma weighting (Hang et al. 2023), and timesteps drawn uniformly or, with
    ``noise_levels=(mean, std)``, as EDM's log-normal noise levels (Karras et al. 2022, sec. 5)."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Prediction,
        *,
        min_snr_gamma: float | None = None,
        noise_levels: tuple[float, float] | None = None,
        clip_x0: float | None = None,
        dynamic_percentile: float | None = None,
    ) -> None:
        self.schedule = schedule
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma
        self.noise_levels = noise_levels
        self.clip_x0 = clip_x0
        self.dynamic_percentile = dynamic_percentile

    def draw(self, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, ...]:
        if self.noise_levels is None:
            t = torch.randint(0, self.schedule.T, (len(x0),), generator=generator)
        else:
            mean, std = self.noise_levels
            sigma = (mean + std * torch.randn(len(x0), generator=generator)).exp()
            t = self.schedule.sigma_to_t(sigma).round().long()
        return t, torch.randn(x0.shape, generator=generator)

    def loss(self, network: nn.Module, x0: Tensor, *draws: Tensor) -> Tensor:
        """The loss of the same :class:`Denoiser` that samples the model."""
        t, noise, *condition = draws
        denoiser = Denoiser(lambda x_t, t: network(x_t, t, *condition), self.schedule, self.prediction)
        return denoiser.loss(x0, t, noise, min_snr_gamma=self.min_snr_gamma)

    def config(self) -> dict[str, Any]:
        return {
            "diffusion": {
                "schedule": self.schedule.to_config(),
                "prediction": self.prediction,
                "clip_x0": self.clip_x0,
                "dynamic_percentile": self.dynamic_percentile,
            }
        }

    def preview(self, network: nn.Module, data: Tensor, run_config: dict[str, Any], **options: Any) -> Tensor:
        """Samples of the EMA network (decoded through ``options["autoencoder"]`` if any)."""
        pipeline = Pipeline.from_config(run_config, network, options.get("autoencoder"))
        return pipeline.sample(options["n"], steps=options["steps"], sampler="ddim", seed=0)


class AutoencoderTask:
    """Reconstruction (MSE) plus a weighted KL to N(0, I): the VAE objective of latent
    diffusion's first stage (Kingma & Welling 2014; Rombach et al. 2022, without the GAN)."""

    def __init__(self, model: nn.Module, *, kl_weight: float) -> None:
        self.latent_channels = model.latent_channels
        self.factor = model.downsampling_factor
        self.kl_weight = kl_weight

    def draw(self, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, ...]:
        n, _, h, w = x0.shape
        return (torch.randn(n, self.latent_channels, h // self.factor, w // self.factor, generator=generator),)

    def loss(self, network: nn.Module, x0: Tensor, *draws: Tensor) -> Tensor:
        (noise,) = draws
        posterior = network.encode(x0)
        reconstruction = network.decode(posterior.mean + posterior.std * noise).float()
        return (reconstruction - x0).pow(2).mean() + self.kl_weight * posterior.kl().mean() / x0[0].numel()

    def config(self) -> dict[str, Any]:
        return {"autoencoder_training": {"kl_weight": self.kl_weight}}

    def preview(self, network: nn.Module, data: Tensor, run_config: dict[str, Any], **options: Any) -> Tensor:
        """Originals (top rows) over their reconstructions (bottom rows)."""
        originals = data[: options["n"] // 2]
        originals = uint8_to_float(originals) if originals.dtype == torch.uint8 else originals.float()
        with torch.inference_mode():
            reconstructions = network.decode(network.encode(originals).mean).clamp(-1, 1)
        return torch.cat([originals, reconstructions])
