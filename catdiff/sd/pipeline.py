"""Stable Diffusion 1.x text-to-image and image-to-image, and the ``catdiff txt2img`` command.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models": diffusion
runs on the VAE's latents (times 0.18215), the U-Net cross-attending to CLIP's hidden states
of the prompt (Radford et al. 2021). Ho & Salimans 2022, "Classifier-Free Diffusion Guidance":
the noise prediction is pushed away from the unconditional one (here: the negative prompt's),
``eps = eps_u + w (eps_c - eps_u)``. Meng et al. 2021, "SDEdit": image-to-image noises the
encoded image to an intermediate level of the sampler's grid and samples from there.

Every sampler of :mod:`catdiff.diffusion.samplers` works: guidance is applied inside the
network function that :class:`~catdiff.diffusion.denoiser.Denoiser` wraps, so each sampler
just sees ``denoise(x, sigma) -> x0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from catdiff.diffusion.conditioning import ClassifierFreeGuidance
from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.samplers import Callback, get_sampler
from catdiff.diffusion.schedule import NoiseSchedule, SigmaSpacing
from catdiff.errors import UserError
from catdiff.models.vae import AutoencoderKL
from catdiff.sd.checkpoint import load_stable_diffusion
from catdiff.sd.text_encoder import CLIPTextEncoder, CLIPTokenizer, open_clip_vocabulary
from catdiff.sd.unet import SDUNet

__all__ = ["PRECISIONS", "StableDiffusion"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def standard_normal(shape: Sequence[int], generator: torch.Generator, device: torch.device | None = None) -> Tensor:
    """A draw from the (CPU) ``generator``, moved to ``device``: the same seed gives the same
    image on every device, and the same draws as diffusers' ``randn_tensor``."""
    return torch.randn(tuple(shape), generator=generator).to(device)


class StableDiffusion:
    """SD-1.x: prompt -> CLIP text states -> guided sampling of latents -> VAE decoder -> image.

    Images are float NCHW in [-1, 1]. The same ``seed`` gives the same image: the start noise,
    the VAE posterior draw (image-to-image) and every sampler draw come from one generator, in
    diffusers' order.
    """

    def __init__(
        self,
        unet: SDUNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextEncoder,
        tokenizer: CLIPTokenizer,
        schedule: NoiseSchedule,
    ) -> None:
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.schedule = tokenizer, schedule

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> StableDiffusion:
        """A CompVis single file or diffusers folder (:func:`~catdiff.sd_checkpoint.load_stable_diffusion`)
        with CLIP's tokenizer; the weights in ``dtype`` on ``device``."""
        vocabulary = open_clip_vocabulary()  # before the long load: a missing vocabulary fails fast
        models = load_stable_diffusion(path, dtype=dtype)
        tokenizer = CLIPTokenizer.from_vocabulary_file(vocabulary, models.text_encoder.config.context_length)
        return cls(
            models.unet.to(device), models.vae.to(device), models.text_encoder.to(device), tokenizer, models.schedule
        )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def default_size(self) -> int:
        """The image side the U-Net was trained at (512 pixels for SD-1.x)."""
        return self.unet.config.sample_size * self.vae.downsampling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> the text encoder's last hidden states ``[B, 77, width]``."""
        return self.text_encoder(self.tokenizer(prompts).to(self.device)).float()

    def guided_denoiser(self, prompt: str, negative_prompt: str, guidance: float, n: int) -> Denoiser:
        """``denoise(x, sigma) -> x0`` for ``n`` images of ``prompt``, guided away from ``negative_prompt``."""
        context, uncond = self.encode_prompts([prompt, negative_prompt]).chunk(2)
        network = ClassifierFreeGuidance(self.unet, context.expand(n, -1, -1), uncond.expand(n, -1, -1), guidance)
        return Denoiser(network, self.schedule, "eps")

    @torch.no_grad()
    def text_to_image(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        guidance: float = 7.5,
        steps: int = 30,
        sampler: str = "dpmpp_2m",
        spacing: SigmaSpacing = "trailing",
        seed: int = 0,
        size: tuple[int, int] | None = None,
        n: int = 1,
        noise: Tensor | None = None,
        callback: Callback | None = None,
    ) -> Tensor:
        """``n`` images ``[n, 3, height, width]`` of ``prompt`` (``size`` is (height, width),
        multiples of 8; SD-1.x's 512 x 512 by default). ``noise`` replaces the start noise
        drawn from ``seed`` (``[n, 4, height / 8, width / 8]``, unit variance)."""
        height, width = size or (self.default_size, self.default_size)
        generator = torch.Generator().manual_seed(seed)
        if noise is None:
            noise = standard_normal((n, self.vae.latent_channels, *self.latent_size(height, width)), generator)
        sigmas = self.schedule.sampling_sigmas(steps, spacing)
        x = noise.to(self.device) * (1 + sigmas[0] ** 2).sqrt().float()
        denoise = self.guided_denoiser(prompt, negative_prompt, guidance, len(x))
        latents = get_sampler(sampler)(denoise, x, sigmas, generator=generator, callback=callback)
        return self.decode(latents)

    @torch.no_grad()
    def image_to_image(
        self,
        image: Tensor,
        prompt: str,
        *,
        strength: float = 0.75,
        negative_prompt: str = "",
        guidance: float = 7.5,
        steps: int = 30,
        sampler: str = "dpmpp_2m",
        spacing: SigmaSpacing = "trailing",
        seed: int = 0,
        callback: Callback | None = None,
    ) -> Tensor:
        """SDEdit (Meng et al. 2021): ``image`` ``[n, 3, H, W]`` in [-1, 1] (sides multiples of 8)
        is encoded, noised to the level ``1 - strength`` of the way along the ``steps``-step grid
        and sampled from there, as diffusers' ``StableDiffusionImg2ImgPipeline``. ``strength`` 1
        starts from pure noise; smaller keeps more of the image. ``round(steps * strength)``
        steps run (rounded down, at least one)."""
        if not 0 < strength <= 1:
            raise UserError(f"strength must be in (0, 1], got {strength}")
        run = int(steps * strength)
        if run < 1:
            raise UserError(f"{steps} steps at strength {strength} leave no step to run; raise steps or strength")
        self.latent_size(image.shape[-2], image.shape[-1])  # refuses sides that are not multiples of 8
        generator = torch.Generator().manual_seed(seed)
        posterior = self.vae.encode(image.to(self.device, self.vae_dtype))
        z = posterior.mean.float() + posterior.std.float() * standard_normal(
            posterior.mean.shape, generator, self.device
        )
        sigmas = self.schedule.sampling_sigmas(steps, spacing)[steps - run :]
        x = z * self.vae.scaling_factor + float(sigmas[0]) * standard_normal(z.shape, generator, self.device)
        denoise = self.guided_denoiser(prompt, negative_prompt, guidance, len(x))
        return self.decode(get_sampler(sampler)(denoise, x, sigmas, generator=generator, callback=callback))

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def decode(self, latents: Tensor) -> Tensor:
        """Diffusion-ready latents -> images in [-1, 1] (float32)."""
        return self.vae.decode_latents(latents.to(self.vae_dtype)).float().clamp(-1, 1)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent side lengths of an image; sides that are not multiples of 8 are a UserError."""
        f = self.vae.downsampling_factor
        if height % f or width % f or height < f or width < f:
            raise UserError(f"image sides must be positive multiples of {f}, got {height} x {width}")
        return height // f, width // f
