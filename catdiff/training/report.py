"""The evaluation at the end of ``catdiff train``: ``RUN/report.json``.

The EMA model of the run's newest checkpoint samples N images with its default sampler; their
Fréchet distance in TAESD features to the training images (at most 2,000, evenly spaced) and,
given held-out images, their memorisation (:func:`catdiff.metrics.evaluate`) are written with the
machine, precision, steps and training time that produced them.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import torch

from catdiff.data.holdout import read_files, training_files
from catdiff.data.image_folder import uint8_to_float
from catdiff.io.json_files import write_json

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"  # in the run folder
REPORT_FORMAT = "catdiff.report/1"
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


def evaluate_run(
    run_dir: Path,
    folder: Path,
    heldout: list[str],
    *,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    training: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate the newest checkpoint of ``run_dir``, trained on ``folder`` but its ``heldout``
    files, and write ``report.json``; ``training`` (precision, steps, elapsed) goes in as it is."""
    from catdiff.metrics import FEATURE_SIZE, evaluate
    from catdiff.pipeline import Pipeline

    folder = folder.resolve()
    n = samples or eval_samples(len(heldout))
    train = uint8_to_float(read_files(training_files(folder, heldout), FEATURE_SIZE, at_most=MAX_TRAIN))
    held = uint8_to_float(read_files([folder / name for name in heldout], FEATURE_SIZE))
    log.info("evaluating: %d samples against %d training and %d held-out images", n, len(train), len(held))
    images = Pipeline.from_folder(run_dir, device=device).sample(n, progress=None).cpu()
    figures = evaluate(images, train, held if len(held) else None)
    report = {
        "format": REPORT_FORMAT,
        "features": "taesd",
        "frechet": figures["frechet"],
        "memorised_fraction": figures.get("memorised_fraction"),
        "nearest_median_ratio": figures.get("nearest_median_ratio"),
        "samples": n,
        "train_images": len(train),
        "heldout_images": len(held),
        "cpu": cpu_name(),
        "device": str(device),
        "init": None,
        **training,
    }
    write_json(run_dir / REPORT_FILE, report)
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """A few plain lines of a report, and a warning when samples copy training images."""
    lines = [f"Fréchet distance (TAESD features, {report['samples']} samples): {report['frechet']:.4g}"]
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
