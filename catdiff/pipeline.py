"""Sampling: noise -> denoiser + schedule + sampler -> images. The library's one entry point."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from catdiff.autoencoders import Autoencoder, load_autoencoder
from catdiff.diffusion.conditioning import ClassifierFreeGuidance
from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.objective import Prediction
from catdiff.diffusion.samplers import get_sampler
from catdiff.diffusion.schedule import NoiseSchedule, SigmaSpacing
from catdiff.errors import UserError
from catdiff.io.checkpoints import (
    load_state_strict,
    read_config,
    read_format_json,
    read_weights,
    resolve_model_folder,
    write_model_folder,
)
from catdiff.models import NULL_CLASS, build_model
from catdiff.rerank import Scorer

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def _read_pipeline_json(folder: Path) -> dict[str, Any]:
    return read_format_json(folder / PIPELINE_FILE, PIPELINE_FORMAT, "pipeline folder")


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Mixed precision for the network's evaluations; the sampler's own arithmetic stays fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


PIPELINE_FORMAT = "catdiff.pipeline/1"
PIPELINE_FILE = "pipeline.json"
UNET_DIR = "unet"
AUTOENCODER_DIR = "autoencoder"
BUNDLED_DIR = Path(__file__).parent / "weights"
BUNDLED_PIPELINES = ("cats", "digits")
# For a model whose export chose none: DPM-Solver++(2M) on the exponential grid, which beat every
# other sampler and grid of docs/PERFORMANCE.md at 10-20 steps; 20 steps leave room for other models.
DEFAULT_SAMPLING = {"sampler": "dpmpp_2m", "steps": 20, "spacing": "exponential"}


def pipeline_folder(spec: str | Path) -> Path:
    """The pipeline folder of a bundled model's name (``"cats"``) or of a path."""
    if str(spec) in BUNDLED_PIPELINES:
        return BUNDLED_DIR / str(spec)
    path = Path(spec)
    if not (path / PIPELINE_FILE).is_file():
        raise UserError(
            f"not a pipeline folder: {path} (needs {PIPELINE_FILE}; make one with `catdiff export`,"
            f" or name a bundled model: {', '.join(BUNDLED_PIPELINES)})"
        )
    return path


def load_network(folder: Path, *, ema: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The denoiser of a model folder and that folder's config."""
    config = read_config(folder)
    try:
        network = build_model(config["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"bad model config in {folder}: {error}") from None
    load_state_strict(network, read_weights(folder, ema=ema), folder)
    return network.eval(), config


def recorded_autoencoder(config: dict[str, Any], folder: Path) -> Autoencoder | None:
    """The autoencoder a run's latents came from, checked against its recorded fingerprint."""
    recorded = config.get("autoencoder")
    if recorded is None:
        return None
    autoencoder = load_autoencoder(
        folder / AUTOENCODER_DIR if (folder / AUTOENCODER_DIR).is_dir() else recorded["source"]
    )
    found = autoencoder.descriptor()
    if found["weights"] != recorded["weights"]:
        raise UserError(f"the autoencoder at {recorded['source']} is not the one {folder} was trained with")
    return autoencoder


@dataclass
class Pipeline:
    """A trained denoiser (+ the autoencoder of its latents) with everything needed to sample it."""

    network: nn.Module
    schedule: NoiseSchedule
    prediction: Prediction
    sample_shape: tuple[int, ...]
    clip_x0: float | None = None
    dynamic_percentile: float | None = None
    autoencoder: Autoencoder | None = None
    sampling: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLING))

    @classmethod
    def from_config(
        cls, config: dict[str, Any], network: nn.Module, autoencoder: Autoencoder | None = None
    ) -> Pipeline:
        diffusion = config["diffusion"]
        return cls(
            network=network,
            schedule=NoiseSchedule.from_config(diffusion["schedule"]),
            prediction=diffusion["prediction"],
            sample_shape=tuple(config["sample_shape"]),
            clip_x0=diffusion.get("clip_x0"),
            dynamic_percentile=diffusion.get("dynamic_percentile"),
            autoencoder=autoencoder,
            sampling={**DEFAULT_SAMPLING, **config.get("sampling", {})},
        )

    @classmethod
    def from_folder(cls, path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> Pipeline:
        """Load a pipeline folder, a model folder, a training checkpoint, or a run's newest checkpoint."""
        path = Path(path)
        if (path / PIPELINE_FILE).is_file():
            network, config = load_network(path / UNET_DIR, ema=ema)
            config = {**config, **_read_pipeline_json(path)}
            autoencoder = recorded_autoencoder(config, path)
        else:
            folder = resolve_model_folder(path)
            network, config = load_network(folder, ema=ema)
            autoencoder = recorded_autoencoder(config, folder)
        pipeline = cls.from_config(config, network, autoencoder)
        return pipeline.to(device)

    def to(self, device: str | torch.device) -> Pipeline:
        self.network.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        return self

    def compile(self) -> Pipeline:
        """Compile the denoiser with ``torch.compile`` (the first batch pays the compile time;
        worth it for long sampling runs or a server). Needs a C++ compiler on CPU."""
        self.network = torch.compile(self.network, dynamic=False)
        return self

    def save(self, folder: Path, config: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> Path:
        """Write a self-contained pipeline folder: ``pipeline.json``, ``unet/``, ``autoencoder/``.

        ``dtype`` is that of the stored denoiser weights (float16 halves the file); they are
        loaded back into float32 modules.
        """
        folder.mkdir(parents=True, exist_ok=True)
        network = getattr(self.network, "_orig_mod", self.network)  # the module itself, if compiled
        weights = {name: tensor.to(dtype) for name, tensor in network.state_dict().items()}
        write_model_folder(folder / UNET_DIR, {"model": config["model"]}, weights)
        description = {key: config[key] for key in ("diffusion", "sample_shape", "autoencoder") if key in config}
        description["sampling"] = self.sampling
        if self.autoencoder is not None:
            self.autoencoder.save(folder / AUTOENCODER_DIR)
        (folder / PIPELINE_FILE).write_text(json.dumps({"format": PIPELINE_FORMAT, **description}, indent=2) + "\n")
        return folder

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional denoiser; None for an unconditional one."""
        return getattr(self.network, "num_classes", None)

    @property
    def guidance(self) -> float:
        """The default classifier-free guidance scale of a class-conditional pipeline."""
        return self.sampling.get("guidance", 1.0)

    def check_condition(self, labels: Tensor | None, guidance: float) -> None:
        """Refuse class labels or guidance that this pipeline cannot use (a :class:`UserError`)."""
        if guidance < 0:
            raise UserError(f"guidance must be at least 0, got {guidance}")
        if labels is None:
            if guidance != 1:
                raise UserError("guidance needs class labels (and a class-conditional model)")
            return
        if self.num_classes is None:
            raise UserError("this model is not class-conditional: it takes no class or guidance")
        wrong = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(wrong):
            raise UserError(f"class must be between 0 and {self.num_classes - 1} for this model, got {wrong[0].item()}")

    def guided_network(self, labels: Tensor | None, guidance: float) -> Callable[..., Tensor]:
        """The network of the denoiser: plain, or guided towards ``labels`` (Ho & Salimans 2022)."""
        if labels is None:
            return self.network
        labels = labels.to(self.device)
        return ClassifierFreeGuidance(self.network, labels, torch.full_like(labels, NULL_CLASS), guidance)

    def sigmas(self, steps: int | None = None, spacing: SigmaSpacing | None = None) -> Tensor:
        """The noise levels of a ``steps``-step sampler; the pipeline's default steps and spacing if None."""
        return self.schedule.sampling_sigmas(steps or self.sampling["steps"], spacing or self.sampling["spacing"])

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        spacing: SigmaSpacing | None = None,
        seed: int = 0,
        labels: Sequence[int] | Tensor | None = None,
        guidance: float = 1.0,
        batch_size: int = 16,
        precision: Precision = "fp32",
        progress: bool | None = False,
        callback: Callable[..., None] | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        """``n`` samples as float NCHW in [-1, 1]; the same seed gives the same images.

        ``steps``, ``sampler`` and ``spacing`` default to the pipeline's (:attr:`sampling`).
        A class-conditional pipeline draws sample ``i`` of class ``labels[i]`` with guidance
        scale ``guidance`` (1: the conditional model, 0: the unconditional one), or, without
        labels, unconditional samples. ``progress=None`` shows a bar only on a terminal.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).expand(n)
        self.check_condition(labels, guidance)
        steps = steps or self.sampling["steps"]
        generator = torch.Generator().manual_seed(seed)
        images = []
        with tqdm(
            total=n * steps,
            disable=None if progress is None else not progress,
            desc="sampling",
            unit="step",
            unit_scale=1 / n,
        ) as bar:

            def on_step(*args: Any, **kwargs: Any) -> None:
                bar.update(len(noise))
                if callback is not None:
                    callback(*args, **kwargs)

            for start in range(0, n, batch_size):
                noise = torch.randn(min(batch_size, n - start), *self.sample_shape, generator=generator)
                options = {"steps": steps, "sampler": sampler, "spacing": spacing, "precision": precision}
                options.update(labels=None if labels is None else labels[start : start + len(noise)], guidance=guidance)
                images.append(
                    self.sample_from_noise(noise, generator=generator, callback=on_step, **options, **sampler_options)
                )
        return torch.cat(images)

    @torch.inference_mode()
    def sample_from_noise(
        self,
        noise: Tensor,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        spacing: SigmaSpacing | None = None,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        guidance: float = 1.0,
        precision: Precision = "fp32",
        callback: Callable[..., None] | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        """One batch of images from given unit-variance start noise (``[B, *sample_shape]``), of
        classes ``labels`` (``[B]``) if given: what :meth:`sample` runs per batch, and what a
        server runs on requests pooled together."""
        sample_fn = get_sampler(sampler or self.sampling["sampler"])
        sigmas = self.sigmas(steps, spacing).to(self.device)
        denoise = Denoiser(
            self.guided_network(labels, guidance),
            self.schedule,
            self.prediction,
            clip_x0=self.clip_x0,
            dynamic_percentile=self.dynamic_percentile,
        )
        x = noise.to(self.device) * (1 + sigmas[0] ** 2).sqrt().float()
        with autocast(self.device, precision):
            x = sample_fn(denoise, x, sigmas, generator=generator, callback=callback, **sampler_options)
        if self.autoencoder is not None:
            x = self.autoencoder.decode(x.float())
        return x.float().clamp(-1, 1)

    def best_of(self, candidates: int, keep: int, scorer: Scorer, **options: Any) -> tuple[Tensor, Tensor]:
        """Best-of-N: ``candidates`` samples made in one batch and ranked by ``scorer``; returns
        the best ``keep`` images and their scores, best first. ``options`` go to :meth:`sample`."""
        if not 1 <= keep <= candidates:
            raise ValueError(f"keep must be between 1 and the {candidates} candidates, got {keep}")
        images = self.sample(candidates, batch_size=candidates, **options)
        scores = scorer(images)
        order = scores.argsort(descending=True)[:keep]
        return images[order], scores[order]
