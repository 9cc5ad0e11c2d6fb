"""diffusers' scheduler configs <-> catdiff's schedule, prediction, x0 clipping and default sampler.

A scheduler config (``scheduler/scheduler_config.json``) holds the training schedule (betas
over ``num_train_timesteps``), what the network predicts and whether x0 is clipped, and, by
its class, how the pipeline samples. catdiff keeps the first three in the pipeline's
``diffusion`` settings and takes the scheduler class as the default sampler: DDPM and DDIM as
themselves, DPM-Solver multistep as DPM-Solver++(2M), Euler as Euler, and PNDM (PLMS, a
multistep method catdiff does not have) as DPM-Solver++(2M), the nearest catdiff has. Where
the scheduler clips x0, catdiff's DDIM takes the network's own noise estimate, as diffusers' DDIM
does by default (``use_clipped_model_output=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from catdiff.errors import UserError

__all__ = ["scheduler_config", "settings_from_scheduler"]

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# class -> (catdiff sampler, the steps its pipelines take by default, its default timestep spacing)
SCHEDULERS = {
    "DDPMScheduler": ("ddpm", 1000, "leading"),
    "DDIMScheduler": ("ddim", 50, "leading"),
    "DPMSolverMultistepScheduler": ("dpmpp_2m", 20, "linspace"),
    "EulerDiscreteScheduler": ("euler", 50, "linspace"),
    "PNDMScheduler": ("dpmpp_2m", 20, "leading"),
}


def unsupported(what: str) -> UserError:
    return UserError(f"this diffusers scheduler config is not supported by catdiff: {what}")


def settings_from_scheduler(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline's ``diffusion`` settings and default ``sampling`` of a scheduler config."""
    kind = config.get("_class_name")
    if kind not in SCHEDULERS:
        raise unsupported(f"scheduler {kind!r} (catdiff maps {', '.join(SCHEDULERS)})")
    beta = config.get("beta_schedule", "linear")
    if beta not in BETA_SCHEDULES or config.get("trained_betas") is not None:
        raise unsupported(f"beta_schedule {beta!r} (catdiff has {', '.join(BETA_SCHEDULES)})")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise unsupported(f"prediction_type {prediction!r}")
    if config.get("thresholding", False):
        raise unsupported("dynamic thresholding")
    if config.get("variance_type", "fixed_small") not in ("fixed_small", "fixed_small_log"):
        raise unsupported(f"variance_type {config['variance_type']!r} (catdiff's DDPM has the posterior variance)")
    if config.get("steps_offset", 0):
        raise unsupported(f"steps_offset {config['steps_offset']}")
    if kind == "DDIMScheduler" and not config.get("set_alpha_to_one", True):
        raise unsupported("set_alpha_to_one false")
    if kind == "DPMSolverMultistepScheduler" and (
        config.get("solver_order", 2) != 2 or config.get("algorithm_type", "dpmsolver++") != "dpmsolver++"
    ):
        raise unsupported("DPM-Solver other than DPM-Solver++ of order 2")
    # Schedulers that clip by default (DDPM, DDIM) say so in their config when saved.
    clip = config.get("clip_sample_range", 1.0) if config.get("clip_sample", False) else None
    sampler, steps, spacing = SCHEDULERS[kind]
    diffusion = {
        "schedule": {
            "kind": BETA_SCHEDULES[beta],
            "T": config.get("num_train_timesteps", 1000),
            "beta_start": config.get("beta_start", 1e-4),
            "beta_end": config.get("beta_end", 0.02),
        },
        "prediction": PREDICTIONS[prediction],
        "clip_x0": clip,
    }
    spacing = config.get("timestep_spacing", spacing)
    if spacing not in ("leading", "trailing", "linspace"):
        raise unsupported(f"timestep_spacing {spacing!r}")
    sampling: dict[str, Any] = {"sampler": sampler, "steps": steps, "spacing": spacing}
    if clip is not None:  # diffusers' DDIM steps with the network's noise, not the clipped x0's
        sampling["sampler_options"] = {"ddim": {"eps": "network"}}
    return diffusion, sampling


def scheduler_config(diffusion: Mapping[str, Any], sampling: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler config for catdiff's ``diffusion`` settings: DDIM for catdiff's DDIM, DDPM
    for its DDPM, and DPM-Solver++(2M) for everything else (the sampler of catdiff's default)."""
    if diffusion.get("dynamic_percentile") is not None:
        raise UserError("dynamic thresholding of x0 has no diffusers scheduler config to match")
    kind = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}.get(
        sampling.get("sampler", ""), "DPMSolverMultistepScheduler"
    )
    schedule = diffusion["schedule"]
    clip = diffusion.get("clip_x0")
    config: dict[str, Any] = {
        "_class_name": kind,
        "num_train_timesteps": schedule["T"],
        "beta_schedule": {ours: theirs for theirs, ours in BETA_SCHEDULES.items()}[schedule["kind"]],
        "beta_start": schedule["beta_start"],
        "beta_end": schedule["beta_end"],
        "prediction_type": {ours: theirs for theirs, ours in PREDICTIONS.items()}[diffusion["prediction"]],
        "timestep_spacing": sampling.get("spacing") if sampling.get("spacing") in ("leading", "trailing", "linspace") else "trailing",
    }  # fmt: skip
    if kind == "DPMSolverMultistepScheduler":
        config.update(solver_order=2, algorithm_type="dpmsolver++", thresholding=False)
    else:
        config.update(clip_sample=clip is not None, clip_sample_range=clip or 1.0)
    return config
