"""Stable Diffusion 1.x text-to-image and image-to-image, and the ``catdiff txt2img`` command.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models": diffusion
runs on the VAE's latents (times 0.18215), the U-Net cross-attending to CLIP's hidden states
of the prompt (Radford et al. 2021). Ho & Salimans 2022, "Classifier-Free Diffusion Guidance":
the noise prediction is pushed away from the unconditional one (here: the negative prompt's),
``eps = eps_u + w (eps_c - eps_u)``. Meng et al. 2021, "SDEdit": image-to-image noises the
encoded image to an intermediate level of the sampler's grid and samples from there.

Sampling is the core's (:class:`catdiff.pipeline.Pipeline`): the prompts are a
:class:`~catdiff.diffusion.conditioning.GuidedCondition` of text states, so every sampler works
and seeds follow the core's per-image convention (image ``i`` of seed ``S`` is seed ``S + i``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from catdiff.autoencoders import Autoencoder
from catdiff.diffusion.conditioning import GuidedCondition
from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.noise import image_generators, standard_normal
from catdiff.diffusion.samplers import Callback
from catdiff.diffusion.schedule import NoiseSchedule, SigmaSpacing
from catdiff.errors import UserError
from catdiff.models.vae import AutoencoderKL
from catdiff.pipeline import Pipeline, sdedit_steps
from catdiff.precision import PRECISIONS, Precision
from catdiff.sd.checkpoint import load_stable_diffusion
from catdiff.sd.text_encoder import CLIPTextEncoder
from catdiff.sd.tokenizer import CLIPTokenizer, clip_vocabulary
from catdiff.sd.unet import SDUNet

__all__ = ["StableDiffusion"]


class StableDiffusion:
    """SD-1.x: prompt -> CLIP text states -> guided sampling of latents -> VAE decoder -> image.

    Images are float NCHW in [-1, 1]. Image ``i`` of seed ``S`` draws its start noise, its VAE
    posterior sample (image-to-image) and every sampler draw from the generator of seed ``S + i``,
    in diffusers' order (diffusers with a list of generators gives the same images).
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
        side = unet.config.sample_size
        self.pipeline = Pipeline(unet, schedule, "eps", (vae.latent_channels, side, side), autoencoder=Autoencoder(vae))

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> StableDiffusion:
        """A CompVis single file or diffusers folder (:func:`~catdiff.sd.checkpoint.load_stable_diffusion`)
        with CLIP's tokenizer: a diffusers folder's own ``tokenizer/`` when it has one, else
        OpenAI's vocabulary from open_clip's wheel; the weights in ``dtype`` on ``device``."""
        path = Path(path)
        # before the long load: a missing or broken vocabulary fails fast
        vocabulary = clip_vocabulary(path / "tokenizer" if path.is_dir() else None)
        models = load_stable_diffusion(path, dtype=dtype)
        if max(vocabulary.tokens.values()) >= models.text_encoder.config.vocab_size:
            raise UserError(f"{path}: the tokenizer's vocabulary is larger than the text encoder's")
        tokenizer = CLIPTokenizer.from_vocabulary(vocabulary, models.text_encoder.config.context_length)
        return cls(
            models.unet.to(device), models.vae.to(device), models.text_encoder.to(device), tokenizer, models.schedule
        )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def precision(self) -> Precision:
        """The weights' dtype, which the U-Net and VAE evaluate in (see :meth:`from_checkpoint`)."""
        dtype = next(self.unet.parameters()).dtype
        return next(name for name, value in PRECISIONS.items() if value == dtype)  # type: ignore[return-value]

    @property
    def default_size(self) -> int:
        """The image side the U-Net was trained at (512 pixels for SD-1.x)."""
        return self.unet.config.sample_size * self.vae.downsampling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> the text encoder's last hidden states ``[B, 77, width]``."""
        return self.text_encoder(self.tokenizer(prompts).to(self.device)).float()

    def text_condition(self, prompt: str, negative_prompt: str, guidance: float, n: int) -> GuidedCondition:
        """``n`` images of ``prompt``, guided away from ``negative_prompt`` at ``guidance``."""
        context, uncond = self.encode_prompts([prompt, negative_prompt]).chunk(2)
        return GuidedCondition(context.expand(n, -1, -1), uncond.expand(n, -1, -1), guidance)

    def guided_denoiser(self, prompt: str, negative_prompt: str, guidance: float, n: int) -> Denoiser:
        """``denoise(x, sigma) -> x0`` for ``n`` images of ``prompt``, guided away from ``negative_prompt``."""
        return self.pipeline.denoiser(self.text_condition(prompt, negative_prompt, guidance, n))

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
        callback: Callback | None = None,
    ) -> Tensor:
        """``n`` images ``[n, 3, height, width]`` of ``prompt`` (``size`` is (height, width),
        multiples of 8; SD-1.x's 512 x 512 by default)."""
        height, width = size or (self.default_size, self.default_size)
        return self.pipeline.sample_batch(
            image_generators(range(seed, seed + n)),
            condition=self.text_condition(prompt, negative_prompt, guidance, n),
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            callback=callback,
            precision=self.precision,
            shape=(self.vae.latent_channels, *self.latent_size(height, width)),
        )

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
        starts from pure noise; smaller keeps more of the image. ``int(steps * strength)`` steps run."""
        sdedit_steps(steps, strength)  # refuses a strength that leaves no step, before the encoder runs
        self.latent_size(image.shape[-2], image.shape[-1])  # refuses sides that are not multiples of 8
        generators = image_generators(range(seed, seed + len(image)))
        posterior = self.vae.encode(image.to(self.device, next(self.vae.parameters()).dtype))
        draw = standard_normal(posterior.mean.shape, generators, device=self.device)
        latents = (posterior.mean.float() + posterior.std.float() * draw) * self.vae.scaling_factor
        return self.pipeline.sample_batch(
            generators,
            condition=self.text_condition(prompt, negative_prompt, guidance, len(image)),
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            callback=callback,
            precision=self.precision,
            init=latents,
            strength=strength,
        )

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent side lengths of an image; sides that are not multiples of 8 are a UserError."""
        f = self.vae.downsampling_factor
        if height % f or width % f or height < f or width < f:
            raise UserError(f"image sides must be positive multiples of {f}, got {height} x {width}")
        return height // f, width // f
