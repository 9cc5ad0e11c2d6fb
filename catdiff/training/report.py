"""The evaluation at the end of ``catdiff train``: ``RUN/report.json``.

The EMA model of the run's newest checkpoint samples N images as the run folder samples by
default (its sampler, autoguided where the run has a guide, recorded in the report); their
Fréchet distance in TAESD features to the training images (at most 2,000, evenly spaced; their
features taken once per run) and, given held-out images, their memorisation
(:func:`catdiff.metrics.memorisation`) are written with the machine, precision, steps and
training time that produced them.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catdiff.data.holdout import read_files, training_files
from catdiff.data.image_folder import uint8_to_float
from catdiff.io.json_files import write_json

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"  # in the run folder
REPORT_FORMAT = "catdiff.report/1"
EVALUATIONS_FILE = "evaluations.jsonl"  # every report of the run, oldest first
MAX_TRAIN = 2000  # training images the samples are compared with
MEMORISED_WARNING = 0.01  # a memorised fraction above this is warned about


def eval_samples(heldout: int) -> int:
    """The samples a run is evaluated with: as many as held-out images, between 100 and 500."""
    return min(500, max(100, heldout))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class References:
    """What a run's samples are measured against, read and featurised once per run: up to
    :data:`MAX_TRAIN` training images and the held-out ones."""

    train: Tensor
    heldout: Tensor
    frechet: Callable[[Tensor], float]

    @classmethod
    def of(cls, folder: Path, heldout: list[str]) -> References:
        from catdiff.metrics import FEATURE_SIZE, FrechetToReference, TAESDFeatures

        folder = folder.resolve()
        train = uint8_to_float(read_files(training_files(folder, heldout), FEATURE_SIZE, at_most=MAX_TRAIN))
        held = uint8_to_float(read_files([folder / name for name in heldout], FEATURE_SIZE))
        return cls(train, held, FrechetToReference(train, TAESDFeatures()))


def evaluate_run(
    run_dir: Path,
    references: References,
    *,
    samples: int,
    device: str | torch.device = "cpu",
    training: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate the newest checkpoint of ``run_dir`` on ``samples`` images against its
    ``references``, write ``report.json`` and add it to ``evaluations.jsonl``; ``training``
    (precision, steps, elapsed, init) goes in as it is."""
    from catdiff.metrics import memorisation
    from catdiff.pipeline import Pipeline

    train, held = references.train, references.heldout
    log.info("evaluating: %d samples against %d training and %d held-out images", samples, len(train), len(held))
    pipeline = Pipeline.from_folder(run_dir, device=device)
    images = pipeline.sample(samples, progress=None).cpu()
    copies = memorisation(images, train, held) if len(held) else None
    report = {
        "format": REPORT_FORMAT,
        "features": "taesd",
        "frechet": references.frechet(images),
        "memorised_fraction": None if copies is None else copies.fraction_closer,
        "nearest_median_ratio": None if copies is None else copies.median_ratio,
        "samples": samples,
        "sampling": {**pipeline.sampling, "autoguided": pipeline.guide is not None},
        "train_images": len(train),
        "heldout_images": len(held),
        "cpu": cpu_name(),
        "device": str(device),
        **training,
    }
    write_json(run_dir / REPORT_FILE, report)
    with open(run_dir / EVALUATIONS_FILE, "a") as history:
        history.write(json.dumps(report) + "\n")
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """A few plain lines of a report, and a warning when samples copy training images."""
    sampling = report.get("sampling", {})
    guided = f", autoguided at {sampling['guidance']:g}" if sampling.get("autoguided") else ""
    lines = [f"Fréchet distance (TAESD features, {report['samples']} samples{guided}): {report['frechet']:.4g}"]
    fraction = report["memorised_fraction"]
    if fraction is None:
        return [*lines, "memorisation: not measured (no held-out images)"]
    lines += [
        f"memorised fraction: {fraction:.2%}",
        f"nearest-train distance ratio (samples / held-out): {report['nearest_median_ratio']:.3f}",
    ]
    if fraction > MEMORISED_WARNING:
        lines.append(f"warning: {fraction:.1%} of the samples are nearer a training image than any held-out image is")
    return lines
