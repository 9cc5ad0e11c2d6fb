"""Samplers: plain functions over a descending grid of noise levels, in the style of k-diffusion.

The shared signature, the registry and the option check are in :mod:`.core`; DDPM and DDIM in
:mod:`.vp`; Euler and Heun in :mod:`.ode`; DPM-Solver++ in :mod:`.dpm_solver`. A new sampler is a
function with that signature decorated with :func:`register_sampler`, in a module imported here.
"""

from catdiff.diffusion.samplers.core import (
    EVALUATIONS_PER_STEP,
    SAMPLERS,
    Callback,
    DenoiseFn,
    Sampler,
    StepInfo,
    check_options,
    check_sigmas,
    get_sampler,
    register_sampler,
    sampler_options,
)
from catdiff.diffusion.samplers.dpm_solver import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m
from catdiff.diffusion.samplers.ode import sample_euler, sample_heun
from catdiff.diffusion.samplers.vp import sample_ddim, sample_ddpm

__all__ = [
    "EVALUATIONS_PER_STEP",
    "SAMPLERS",
    "Callback",
    "DenoiseFn",
    "Sampler",
    "StepInfo",
    "check_options",
    "check_sigmas",
    "get_sampler",
    "register_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_heun",
    "sampler_options",
]
