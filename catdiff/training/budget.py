"""Where a run stands against its ends: training time, the learning-rate schedule, time left.

Only time spent inside training steps counts (not data loading, checkpoints or previews), and
it is saved in every checkpoint, so a resumed run continues the same budget. With a time
budget the cosine schedule runs on that time, so the learning rate at step ``k`` depends on
how fast the steps ran; without one every quantity here is a pure function of the step.
"""

from __future__ import annotations

import math
from time import perf_counter

from catdiff.training.config import TrainConfig


class Clock:
    """Seconds of training time: ``with clock:`` around each step adds its duration to ``spent``."""

    def __init__(self, spent: float = 0.0) -> None:
        self.spent = spent
        self._start = 0.0

    def __enter__(self) -> Clock:
        self._start = perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent += perf_counter() - self._start


def learning_rate_factor(step: int, config: TrainConfig, spent: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to zero at the run's
    end (Loshchilov & Hutter 2017), on the :func:`run_progress` after the warm-up."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    progress = run_progress(step, spent, config, start=config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def run_progress(step: int, spent: float, config: TrainConfig, *, start: int = 0) -> float:
    """How far along the run is, from 0 at step ``start``: steps over ``max_steps`` or training
    time over ``time_budget``, whichever is further."""
    progress = 0.0
    if config.max_steps is not None:
        progress = (step - start) / max(1, config.max_steps - start)
    if config.time_budget is not None:
        progress = max(progress, spent / config.time_budget)
    return progress


def finished(step: int, spent: float, config: TrainConfig) -> bool:
    """Whether the run has reached ``max_steps`` or spent its ``time_budget``."""
    by_steps = config.max_steps is not None and step >= config.max_steps
    return by_steps or (config.time_budget is not None and spent >= config.time_budget)


def time_left(step: int, spent: float, seconds_per_step: float, config: TrainConfig) -> float:
    """An estimate of the training time to the nearer end of the run."""
    left = math.inf
    if config.max_steps is not None:
        left = max(0, config.max_steps - step) * seconds_per_step
    if config.time_budget is not None:
        left = min(left, max(0.0, config.time_budget - spent))
    return left
