"""The training options: one dataclass, saved in every checkpoint's ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from catdiff.diffusion.schedule import NoiseSchedule, ScheduleConfig
from catdiff.errors import UserError
from catdiff.models import model_settings
from catdiff.validation import validate

DEFAULT_MAX_STEPS = 10_000


@dataclass
class TrainConfig:
    """Everything that defines a run.

    A run ends at ``max_steps`` or when ``time_budget`` seconds of training time are spent,
    whichever comes first. ``max_steps=None`` means no step limit when there is a budget, and
    :data:`DEFAULT_MAX_STEPS` when there is none.
    """

    model: dict[str, Any] = field(default_factory=lambda: {"type": "unet"})
    schedule: ScheduleConfig = field(default_factory=lambda: NoiseSchedule().to_config())
    prediction: Literal["eps", "v", "x0"] = "eps"
    min_snr_gamma: float | None = None
    # EDM's training noise levels (Karras et al. 2022, sec. 5): ln sigma ~ N(mean, std), each
    # sigma taken to its nearest timestep; None: timesteps drawn uniformly (Ho et al. 2020).
    noise_levels: tuple[float, float] | None = None
    label_dropout: float = 0.1
    kl_weight: float = 1e-6
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 200
    lr_schedule: Literal["constant", "cosine"] = "constant"
    max_steps: int | None = None
    time_budget: float | None = None
    grad_clip: float = 1.0
    ema_max_decay: float = 0.9999
    ema_power: float = 2 / 3
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = False  # the network and its inputs in NHWC memory format
    flip: bool = True
    augment: float = 0.0  # probability of each non-leaking augmentation (catdiff.training.augment); 0: off
    recipe: str | None = None  # the shipped recipe the options came from (catdiff.recipes)
    init: str | None = None  # the model the run started from (catdiff.training.init); None: from scratch
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    preview_every: int = 1000
    preview_n: int = 16
    preview_steps: int = 50
    log_every: int = 50
    eval_every: int = 0  # steps between evaluations during the run (catdiff.training.report); 0: at the end only
    # Autoguidance (Karras et al. 2024): the EMA weights this far through the run (0..1) are kept
    # as RUN/guide, the weaker model that guides the final one at ``guidance`` over noise levels
    # ``guidance_interval`` ([sigma_low, sigma_high]); None: no guide.
    guide_at: float | None = None
    guidance: float = 1.0
    guidance_interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.guidance_interval is not None:
            self.guidance_interval = tuple(self.guidance_interval)
        if self.noise_levels is not None:
            self.noise_levels = tuple(self.noise_levels)
        if self.max_steps is None and self.time_budget is None:
            self.max_steps = DEFAULT_MAX_STEPS
        checks = {
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "time_budget": self.time_budget is None or self.time_budget > 0,
            "lr": self.lr > 0,
            "label_dropout": 0 <= self.label_dropout <= 1,
            "augment": 0 <= self.augment <= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "preview_every": self.preview_every >= 0,
            "log_every": self.log_every >= 1,
            "eval_every": self.eval_every >= 0,
            "guide_at": self.guide_at is None or 0 < self.guide_at < 1,
            "guidance": self.guidance >= 0,
            "guidance_interval": self.guidance_interval is None
            or 0 <= self.guidance_interval[0] < self.guidance_interval[1],
            "warmup_steps": self.warmup_steps >= 0,
            "grad_clip": self.grad_clip >= 0,
            "weight_decay": self.weight_decay >= 0,
            "ema_max_decay": 0 <= self.ema_max_decay <= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "preview_n": self.preview_n >= 1,
            "preview_steps": self.preview_steps >= 1,
            "min_snr_gamma": self.min_snr_gamma is None or self.min_snr_gamma > 0,
            "noise_levels": self.noise_levels is None or self.noise_levels[1] > 0,
            "betas": all(0 <= beta < 1 for beta in self.betas),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"invalid training option {bad[0]}={getattr(self, bad[0])!r}")
        model_settings(self.model)
        try:
            NoiseSchedule.from_config(dict(self.schedule))
        except (TypeError, ValueError) as error:
            raise UserError(f"invalid training option schedule: {error}") from None

    @classmethod
    def from_dict(cls, values: dict[str, Any], what: str = "training options") -> TrainConfig:
        """Options as a JSON file or the command line give them, checked strictly
        (:mod:`catdiff.validation`): any wrong key, type or value is a one-line :class:`UserError`."""
        return validate(cls, values, what)


@dataclass
class Recipe(TrainConfig):
    """A recipe file (:mod:`catdiff.recipes`): training options, ``"auto"`` where the run measures
    the fastest precision or memory format, and two keys of the command: ``size``, the training
    resolution in pixels, and ``pixels``, true to train an image folder in pixel space."""

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "no"  # type: ignore[assignment]
    channels_last: bool | Literal["auto"] = False
    size: int | None = None
    pixels: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 1:
            raise UserError(f"invalid recipe option size={self.size!r}")
        super().__post_init__()
