"""A run's curves in the experiment trackers people already use, through accelerate's tracker
API (``catdiff train --log-with tensorboard``), beside ``log.jsonl``.

Everything stays in the run folder and off the network unless the user says otherwise:
TensorBoard writes ``RUN/trackers/catdiff/``, MLflow a file store in ``RUN/trackers/mlruns``
and Weights & Biases runs offline (``WANDB_MODE=offline``), each only where the environment
does not already choose.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from catdiff.errors import UserError
from catdiff.training.config import TrainConfig

TRACKERS = ("tensorboard", "wandb", "mlflow")
TRACKERS_DIR = "trackers"  # in the run folder
PROJECT = "catdiff"
CURVES = ("loss", "lr", "img_per_s")  # of a log.jsonl record, sent to the trackers


def check_trackers(names: list[str]) -> None:
    """Refuse an unknown tracker, or one whose package is not installed, naming the fix."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    for name in names:
        if name not in available:
            raise UserError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if not available[name]():
            raise UserError(f"--log-with {name} needs the {name} package: pip install {name}")


def tracker_dir(run_dir: Path, names: list[str]) -> Path:
    """Where the trackers of a run write, set up to stay offline unless the environment says otherwise."""
    root = run_dir / TRACKERS_DIR
    if "wandb" in names:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(root))
    if "mlflow" in names:
        os.environ.setdefault("MLFLOW_TRACKING_URI", (root / "mlruns").resolve().as_uri())
    return root


def hyperparameters(config: TrainConfig) -> dict[str, Any]:
    """The run's options as trackers take them: numbers, strings and booleans (the rest as JSON)."""
    flat = {}
    for key, value in asdict(config).items():
        scalar = value is None or isinstance(value, bool | int | float | str)
        flat[key] = "none" if value is None else value if scalar else json.dumps(value)
    return flat
