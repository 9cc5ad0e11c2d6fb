"""Sample quality over training: `catdiff eval` on checkpoints of a run, as a Markdown table.

    python bench/checkpoint_curve.py runs/cats-128 --train data/split/train --heldout data/split/heldout \
        --every 2 --n 500 --steps 20 --sampler dpmpp_2m

For each chosen checkpoint: the Fréchet distance to the training images in TAESD features
(no download needed) and the memorisation fraction (samples closer to a training image than
any held-out image is), with the same seed, so the rows differ only by the weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from catdiff.data.image_folder import ImageFolder, uint8_to_float
from catdiff.io.checkpoints import checkpoint_dirs, read_config
from catdiff.metrics import evaluate
from catdiff.pipeline import Pipeline


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def images_per_step(config: dict) -> int:
    return config["train"]["batch_size"] * config["train"]["grad_accum"]


def training_seconds(log: list[dict], step: int, images: int) -> float:
    """Time spent training up to ``step``, from each logged window's throughput (pauses and
    the gaps between sessions do not count)."""
    seconds, previous = 0.0, 0
    for record in log:
        if record["step"] > step:
            break
        seconds += (record["step"] - previous) * images / record["img_per_s"]
        previous = record["step"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--heldout", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1, help="evaluate every k-th checkpoint (and the last)")
    parser.add_argument("--at", type=int, nargs="+", help="evaluate the checkpoints of these steps instead")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, help="default: the run's (catdiff.pipeline.DEFAULT_SAMPLING)")
    parser.add_argument("--sampler", help="default: the run's")
    parser.add_argument("--spacing", help="default: the run's")
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    train = ImageFolder(args.train, 64, preload=True).images
    train = uint8_to_float(train[:: max(1, -(-len(train) // args.max_train))])
    heldout = uint8_to_float(ImageFolder(args.heldout, 64, preload=True).images)
    log = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines()]
    found = checkpoint_dirs(args.run)
    chosen = found[:: args.every] + ([found[-1]] if (len(found) - 1) % args.every else [])
    if args.at:
        chosen = [folder for folder in found if step_of(folder) in args.at]
    rows = []
    print("| step | hours of training | Fréchet distance (TAESD) | memorised fraction | nearest-train distance ratio |")
    print("|---|---|---|---|---|")
    for folder in chosen:
        step = step_of(folder)
        pipeline = Pipeline.from_folder(folder)
        began = time.perf_counter()
        samples = pipeline.sample(
            args.n, steps=args.steps, sampler=args.sampler, spacing=args.spacing, seed=0, batch_size=100
        )
        report = evaluate(samples, train, heldout)
        row = {
            "step": step,
            "hours": training_seconds(log, step, images_per_step(read_config(folder))) / 3600,
            "sample_s": time.perf_counter() - began,
            **report,
        }
        rows.append(row)
        print(
            f"| {step} | {row['hours']:.2f} | {report['frechet']:.2f} | {report['memorised_fraction']:.3f} |"
            f" {report['nearest_median_ratio']:.2f} |",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
