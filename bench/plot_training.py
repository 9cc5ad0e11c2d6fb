"""Plot the loss and throughput of training runs from their ``log.jsonl`` files.

    python bench/plot_training.py runs/a runs/b --labels "general U-Net" "seed U-Net" --out docs/loss.png

Needs matplotlib (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run, label in zip(args.runs, labels, strict=True):
        records = read_log(run)
        steps = [r["step"] for r in records]
        losses = [r["loss"] for r in records]
        minutes = [(r["time"] - records[0]["time"]) / 60 for r in records]
        by_step.plot(steps, losses, label=label)
        by_time.plot(minutes, losses, label=label)
    for axes, xlabel in ((by_step, "step"), (by_time, "minutes since first log")):
        axes.set_xlabel(xlabel)
        axes.set_ylabel("training loss (MSE)")
        axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
