"""The sampling core: seeds -> start noise -> denoiser + condition + sampler -> decoder -> images.

Every model samples through :class:`Pipeline`: the bundled cats and digits, trained runs and
Stable Diffusion (:mod:`catdiff.sd.pipeline` builds one around its U-Net and VAE). What the
images are conditioned on is a :mod:`~catdiff.diffusion.conditioning` object; a sampler's own
options are a separate mapping, checked against what that sampler accepts. Image ``i`` of a call
with seed ``S`` is the image of seed ``S + i`` (EDM's convention), whatever the batching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from annotated_types import Ge, Le, Len
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from typing_extensions import Required, TypedDict

from catdiff.autoencoders import Autoencoder, load_autoencoder
from catdiff.diffusion.conditioning import Autoguided, Condition, GuidedCondition, Unconditional
from catdiff.diffusion.denoiser import Denoiser
from catdiff.diffusion.noise import image_generators, standard_normal
from catdiff.diffusion.objective import Prediction
from catdiff.diffusion.samplers import SAMPLERS, Callback, check_options, get_sampler
from catdiff.diffusion.schedule import NoiseSchedule, ScheduleConfig, SigmaSpacing, vp_to_ve
from catdiff.errors import UserError
from catdiff.io.checkpoints import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    checkpoint_dirs,
    read_config,
    read_weights,
    resolve_model_folder,
    write_model_folder,
)
from catdiff.io.json_files import read_json, write_json
from catdiff.io.state_dicts import load_state_strict
from catdiff.models import NULL_CLASS, build_model, model_config
from catdiff.precision import Precision, autocast
from catdiff.validation import validate

Scorer = Callable[[Tensor], Tensor]  # images -> one score each, higher is better (catdiff.rerank)


def _read_pipeline_json(folder: Path) -> dict[str, Any]:
    return read_json(folder / PIPELINE_FILE, format=PIPELINE_FORMAT, what="pipeline folder")


PIPELINE_FORMAT = "catdiff.pipeline/1"
PIPELINE_FILE = "pipeline.json"
UNET_DIR = "unet"
GUIDE_DIR = "guide"  # the autoguidance network of an unconditional pipeline, if it has one
AUTOENCODER_DIR = "autoencoder"
BUNDLED_DIR = Path(__file__).parent / "weights"
BUNDLED_PIPELINES = ("cats", "digits")
# For a model whose export chose none: DPM-Solver++(2M) on the exponential grid, which beat every
# other sampler and grid of docs/PERFORMANCE.md at 10-20 steps; 20 steps leave room for other models.
DEFAULT_SAMPLING = {"sampler": "dpmpp_2m", "steps": 20, "spacing": "exponential"}
# Guidance scales beyond this only saturate images (SD's useful range ends near 15-20).
MAX_GUIDANCE = 30.0
# Best-of-N: candidates are made and scored this many at a time, so memory stays bounded.
BEST_OF_CHUNK = 64


def pipeline_folder(spec: str | Path) -> Path:
    """The folder of a model to sample: a bundled model's name (``"cats"``), a pipeline folder, a
    diffusers pipeline folder (:mod:`catdiff.io.diffusers_pipeline`), or what
    :meth:`Pipeline.from_folder` resolves as well: a run folder of ``catdiff train`` (its newest
    checkpoint), a checkpoint or a model folder. Anything else is a :class:`UserError`."""
    from catdiff.io.diffusers_pipeline import is_diffusers_folder

    if str(spec) in BUNDLED_PIPELINES:
        return BUNDLED_DIR / str(spec)
    path = Path(spec)
    if (path / PIPELINE_FILE).is_file() or is_diffusers_folder(path):
        return path
    if not path.is_dir():
        raise UserError(
            f"no such model: {path} (give a pipeline folder, a run folder of `catdiff train`,"
            f" or a bundled model: {', '.join(BUNDLED_PIPELINES)})"
        )
    if (path / CHECKPOINTS_DIR).is_dir() and not checkpoint_dirs(path):
        raise UserError(f"run folder {path} has no checkpoint yet")
    try:
        resolve_model_folder(path)  # a run folder with checkpoints, a checkpoint or a model folder
    except UserError:
        raise UserError(
            f"not a model: {path} (needs {PIPELINE_FILE}, a run's {CHECKPOINTS_DIR}/ or a model's config.json;"
            f" or name a bundled model: {', '.join(BUNDLED_PIPELINES)})"
        ) from None
    return path


def load_network(folder: Path, *, ema: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The denoiser of a model folder and that folder's config."""
    config = read_config(folder)
    if "model" not in config:
        raise UserError(f"{folder / 'config.json'} has no model config")
    try:
        network = build_model(config["model"])
    except UserError as error:
        raise UserError(f"{folder}: {error}") from None
    load_state_strict(network, read_weights(folder, ema=ema), folder)
    return network.eval(), config


Positive = Annotated[int, Ge(1)]
NonNegative = Annotated[float, Ge(0)]


class DiffusionSettings(TypedDict, total=False):
    schedule: Required[ScheduleConfig]
    prediction: Required[Prediction]
    clip_x0: NonNegative | None
    dynamic_percentile: Annotated[float, Ge(0), Le(100)] | None


class SamplingSettings(TypedDict, total=False):
    """A pipeline's default sampler, steps and grid, and its guidance (:meth:`Pipeline.autoguidance`)."""

    sampler: str
    steps: Positive
    spacing: SigmaSpacing
    guidance: NonNegative
    guidance_interval: tuple[NonNegative, NonNegative]
    sampler_options: dict[str, dict[str, Any]]  # sampler -> the options it takes from this pipeline


class SamplingDescription(TypedDict, total=False):
    """What a pipeline, run or model folder says of how it samples, checked strictly on load."""

    diffusion: Required[DiffusionSettings]
    sample_shape: Required[Annotated[list[Positive], Len(1, 3)]]
    sampling: SamplingSettings
    output_size: Positive


def check_description(config: dict[str, Any], file: Path) -> None:
    """Refuse, in one line naming ``file`` and the key, a config that cannot be sampled."""
    if "diffusion" not in config and "autoencoder_training" in config:
        raise UserError(f"{file} describes an autoencoder, not a diffusion model to sample")
    keys = SamplingDescription.__annotations__
    validate(SamplingDescription, {key: value for key, value in config.items() if key in keys}, str(file))
    sampler = config.get("sampling", {}).get("sampler", DEFAULT_SAMPLING["sampler"])
    if sampler not in SAMPLERS:
        raise UserError(f"{file}: sampling.sampler: unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def network_folder(path: Path) -> Path:
    """The model folder of the denoiser of a pipeline (``unet/``), run (its newest checkpoint),
    checkpoint or model folder."""
    return path / UNET_DIR if (path / PIPELINE_FILE).is_file() else resolve_model_folder(path)


def read_model(path: Path) -> tuple[Path, dict[str, Any], Path]:
    """Where the denoiser of a pipeline, run, checkpoint or model folder lies, its config (with a
    pipeline's sampling and diffusion settings, checked by :func:`check_description`) and the
    folder its autoencoder is looked up from."""
    if (path / PIPELINE_FILE).is_file():
        folder, home, file = path / UNET_DIR, path, path / PIPELINE_FILE
        config = {**read_config(folder), **_read_pipeline_json(path)}
    else:
        folder = home = resolve_model_folder(path)
        file, config = folder / CONFIG_FILE, read_config(folder)
    check_description(config, file)
    return folder, config, home


def guide_folder(home: Path) -> Path | None:
    """The autoguidance network of the model at ``home`` (of :func:`read_model`), if it has one:
    ``guide/`` of a pipeline or model folder, or of the run a checkpoint belongs to."""
    owner = home.parent.parent if home.parent.name == CHECKPOINTS_DIR else home
    return owner / GUIDE_DIR if (owner / GUIDE_DIR).is_dir() else None


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
    #: A weaker version of ``network`` (same prediction) that guides it: :meth:`autoguidance`.
    guide: nn.Module | None = None
    #: The side of the images it gives, where the decoded images are smaller: a model trained at
    #: its pictures' own resolution is upsampled as its training pictures would be (:meth:`decode`).
    output_size: int | None = None

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        network: nn.Module,
        autoencoder: Autoencoder | None = None,
        guide: nn.Module | None = None,
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
            guide=guide,
            output_size=config.get("output_size"),
        )

    @classmethod
    def from_folder(cls, path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> Pipeline:
        """Load a bundled model by name (``"cats"``), a pipeline folder, a diffusers pipeline
        folder, a model folder, a training checkpoint, or a run's newest checkpoint."""
        from catdiff.io.diffusers_pipeline import is_diffusers_folder, load_diffusers_pipeline

        path = pipeline_folder(path)
        if is_diffusers_folder(path):
            return load_diffusers_pipeline(path).to(device)
        weights, config, home = read_model(path)
        network, _ = load_network(weights, ema=ema)
        channels = getattr(getattr(network, "config", None), "in_channels", config["sample_shape"][0])
        if config["sample_shape"][0] != channels:
            raise UserError(
                f"{path}: sample_shape {config['sample_shape']} does not fit the network's {channels} input channels"
            )
        guide_dir = guide_folder(home)
        guide = None if guide_dir is None else load_network(guide_dir, ema=ema)[0]
        pipeline = cls.from_config(config, network, recorded_autoencoder(config, home), guide)
        return pipeline.to(device)

    def to(self, device: str | torch.device) -> Pipeline:
        self.network.to(device)
        if self.guide is not None:
            self.guide.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        return self

    def compile(self) -> Pipeline:
        """Compile the denoiser with ``torch.compile`` (the first batch pays the compile time;
        worth it for long sampling runs or a server). Needs a C++ compiler on CPU."""
        self.network = torch.compile(self.network, dynamic=False)
        if self.guide is not None:
            self.guide = torch.compile(self.guide, dynamic=False)
        return self

    def save(self, folder: Path, config: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> Path:
        """Write a self-contained pipeline folder: ``pipeline.json``, ``unet/``, ``autoencoder/``.

        ``dtype`` is that of the stored denoiser weights (float16 halves the file); they are
        loaded back into float32 modules.
        """
        folder.mkdir(parents=True, exist_ok=True)
        write_network(folder / UNET_DIR, self.network, dtype)
        if self.guide is not None:
            write_network(folder / GUIDE_DIR, self.guide, dtype)
        description = {key: config[key] for key in ("diffusion", "sample_shape", "autoencoder") if key in config}
        description["sampling"] = self.sampling
        if self.output_size is not None:
            description["output_size"] = self.output_size
        if self.autoencoder is not None:
            self.autoencoder.save(folder / AUTOENCODER_DIR)
        write_json(folder / PIPELINE_FILE, {"format": PIPELINE_FORMAT, **description})
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
        """The default guidance scale: classifier-free for a class-conditional pipeline,
        autoguidance for an unconditional one with a :attr:`guide`; 1 is none."""
        return self.sampling.get("guidance", 1.0)

    def default_condition(self) -> Condition:
        """What images are conditioned on when a call says nothing: autoguided at the pipeline's
        guidance where it has a guide, else nothing."""
        return Unconditional() if self.guide is None else self.autoguidance()

    def autoguidance(self, guidance: float | None = None) -> Autoguided:
        """Unconditional images guided by :attr:`guide` at ``guidance`` (default: the
        pipeline's; 1: none; Karras et al. 2024), over the pipeline's ``guidance_interval`` of
        noise levels ``[sigma_low, sigma_high]`` if it has one (Kynkäänniemi et al. 2024)."""
        guidance = self.guidance if guidance is None else check_guidance(guidance)
        if self.guide is None:
            raise UserError("this model is unconditional and has no guide network (autoguidance): it takes no guidance")
        low, high = self.sampling.get("guidance_interval", (0.0, math.inf))
        return Autoguided(self.guide, guidance, self._timestep(low), self._timestep(high))

    def _timestep(self, sigma: float) -> float:
        """The timestep of noise level ``sigma``; -inf below the schedule's levels, inf above."""
        if sigma < self.schedule.sigma_min:
            return -math.inf
        if sigma > self.schedule.sigma_max:
            return math.inf
        return float(self.schedule.sigma_to_t(torch.tensor(float(sigma))))

    def class_condition(self, labels: Sequence[int] | Tensor, guidance: float | None = None) -> GuidedCondition:
        """Image ``i`` of class ``labels[i]``, guided at ``guidance`` (default: the pipeline's;
        1: the conditional model, 0: the unconditional one; Ho & Salimans 2022). Labels or
        guidance that this pipeline cannot use are a :class:`UserError`."""
        guidance = self.guidance if guidance is None else check_guidance(guidance)
        if self.num_classes is None:
            raise UserError("this model is not class-conditional: it takes no class or guidance")
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        wrong = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(wrong):
            raise UserError(f"class must be between 0 and {self.num_classes - 1} for this model, got {wrong[0].item()}")
        return GuidedCondition(labels, torch.full_like(labels, NULL_CLASS), guidance)

    def sigmas(self, steps: int | None = None, spacing: SigmaSpacing | None = None) -> Tensor:
        """The noise levels of a ``steps``-step sampler; the pipeline's default steps and spacing if None."""
        return self.schedule.sampling_sigmas(steps or self.sampling["steps"], spacing or self.sampling["spacing"])

    def denoiser(self, condition: Condition) -> Denoiser:
        """``denoise(x, sigma) -> x0`` of the network bound to ``condition``."""
        return Denoiser(
            condition.guide(self.network),
            self.schedule,
            self.prediction,
            clip_x0=self.clip_x0,
            dynamic_percentile=self.dynamic_percentile,
        )

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        *,
        seed: int = 0,
        condition: Condition | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: SigmaSpacing | None = None,
        sampler_options: Mapping[str, Any] | None = None,
        batch_size: int = 16,
        precision: Precision = "auto",
        progress: bool | None = False,
        callback: Callback | None = None,
    ) -> Tensor:
        """``n`` samples as float NCHW in [-1, 1]; image ``i`` is the image of seed ``seed + i``.

        ``condition`` covers the ``n`` images (e.g. :meth:`class_condition`); unconditional if
        None. ``sampler``, ``steps`` and ``spacing`` default to the pipeline's (:attr:`sampling`);
        ``sampler_options`` go to the sampler (e.g. ``{"eta": 0.5}`` for DDIM), over those the
        pipeline keeps for it (``sampling["sampler_options"][sampler]``). ``precision``
        is that of the network and decoder evaluations; ``"auto"`` is bf16 where the hardware
        computes it natively (:func:`catdiff.precision.fast_bf16`). ``progress=None`` shows a bar
        only on a terminal.
        """
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}")
        condition = condition or self.default_condition()
        steps = steps or self.sampling["steps"]
        settings = {"sampler": sampler, "steps": steps, "spacing": spacing, "sampler_options": sampler_options}
        images = []
        disable = None if progress is None else not progress
        with tqdm(total=n * steps, disable=disable, desc="sampling", unit="step", unit_scale=1 / n) as bar:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)

                def on_step(info: Any, size: int = stop - start) -> None:
                    bar.update(size)
                    if callback is not None:
                        callback(info)

                generators = image_generators(range(seed + start, seed + stop))
                part = condition.take(slice(start, stop))
                images.append(
                    self.sample_batch(generators, condition=part, precision=precision, callback=on_step, **settings)
                )
        return torch.cat(images)

    @torch.inference_mode()
    def sample_batch(
        self,
        generators: Sequence[torch.Generator],
        *,
        condition: Condition | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: SigmaSpacing | None = None,
        sampler_options: Mapping[str, Any] | None = None,
        precision: Precision = "auto",
        callback: Callback | None = None,
        shape: Sequence[int] | None = None,
        init: Tensor | None = None,
        strength: float = 1.0,
    ) -> Tensor:
        """One batch, image ``i`` drawn from ``generators[i]`` alone: its start noise
        ``torch.randn(shape, generator=generators[i])`` first, then every per-step draw of the
        sampler in order. What :meth:`sample` runs per batch and a server runs on pooled requests.

        ``shape`` overrides :attr:`sample_shape`. With ``init`` (clean latents, ``[B, *shape]``),
        SDEdit (Meng et al. 2021): noise them to the level ``1 - strength`` of the way along the
        grid and run the ``int(steps * strength)`` steps left from there.
        """
        name = sampler or self.sampling["sampler"]
        options = {**self.sampling.get("sampler_options", {}).get(name, {}), **(sampler_options or {})}
        check_options(name, options)
        sample_fn = get_sampler(name)
        sigmas = self.sigmas(steps, spacing)
        if init is None:
            shape = (len(generators), *(shape or self.sample_shape))
            x = vp_to_ve(standard_normal(shape, generators, device=self.device), sigmas[0])
        else:
            sigmas = sigmas[len(sigmas) - 1 - sdedit_steps(len(sigmas) - 1, strength) :]
            x = init.float() + float(sigmas[0]) * standard_normal(init.shape, generators, device=self.device)
        with autocast(self.device, precision):
            x = sample_fn(
                self.denoiser(condition or self.default_condition()),
                x,
                sigmas.to(self.device),
                generator=generators,
                callback=callback,
                **options,
            )
        return self.decode(x, precision)

    def decode(self, latents: Tensor, precision: Precision = "auto") -> Tensor:
        """Samples -> images in [-1, 1] (float32), through the autoencoder of latent models, whose
        convolutions run in ``precision`` (the sampler's latents stay float32 up to there), then
        up to :attr:`output_size` where that is larger (bicubic, antialiased: the resampling
        ``catdiff train`` gives pictures smaller than its ``--size``)."""
        if self.autoencoder is None:
            images = latents.float().clamp(-1, 1)
        else:
            with autocast(self.device, precision):
                images = self.autoencoder.decode(latents.float()).float().clamp(-1, 1)
        if self.output_size is None or self.output_size <= images.shape[-1]:
            return images
        size = (self.output_size, self.output_size)
        return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)

    def best_of(self, candidates: int, keep: int, scorer: Scorer, **options: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Best-of-N: ``candidates`` samples made in one batch and ranked by ``scorer``; returns
        the best ``keep`` images, their scores and their indices among the candidates (so
        their seeds are ``seed + indices``), best first. ``options`` go to :meth:`sample`."""
        if not 1 <= keep <= candidates:
            raise UserError(f"keep must be between 1 and the {candidates} candidates, got {keep}")
        seed, condition = options.pop("seed", 0), options.pop("condition", None) or self.default_condition()
        best = (torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long))
        for start in range(0, candidates, BEST_OF_CHUNK):  # memory for one chunk and the best so far
            stop = min(candidates, start + BEST_OF_CHUNK)
            part = condition.take(slice(start, stop))
            images = self.sample(stop - start, seed=seed + start, condition=part, **options).cpu()  # scored on the CPU
            merged = (
                torch.cat([best[0], images]),
                torch.cat([best[1], scorer(images)]),
                torch.cat([best[2], torch.arange(start, stop)]),
            )
            order = merged[1].argsort(descending=True, stable=True)[:keep]
            best = (merged[0][order], merged[1][order], merged[2][order])
        return best


def check_guidance(guidance: float) -> float:
    """A guidance scale, refused as a :class:`UserError` unless from 0 to :data:`MAX_GUIDANCE`."""
    if not 0 <= guidance <= MAX_GUIDANCE:  # NaN too
        raise UserError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {guidance}")
    return guidance


def write_network(folder: Path, network: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """A denoiser as a model folder, its weights in ``dtype``: the module itself if compiled,
    without its augmentation input (sampling never gives that condition)."""
    network = getattr(network, "_orig_mod", network)
    if hasattr(network, "without_augmentation"):
        network = network.without_augmentation()
    weights = {name: tensor.to(dtype) for name, tensor in network.state_dict().items()}
    write_model_folder(folder, {"model": model_config(network)}, weights)


def sdedit_steps(steps: int, strength: float) -> int:
    """The steps SDEdit runs of a ``steps``-step grid at ``strength`` in (0, 1], as diffusers'
    img2img pipelines count them: ``int(steps * strength)``, which must leave at least one."""
    if not 0 < strength <= 1:
        raise UserError(f"strength must be in (0, 1], got {strength}")
    run = int(steps * strength)
    if run < 1:
        raise UserError(f"{steps} steps at strength {strength} leave no step to run; raise steps or strength")
    return run
