"""Classifier-free guidance on the digits model: accuracy and Fréchet distance against the scale.

    python bench/digits_guidance.py digits /work/runs/digits/data/heldout --train /work/runs/digits/data/train \
        --scales 0 1 1.5 3 5 --per-class 50 --json docs/digits-guidance.json --grids docs/img

For each guidance scale ``w`` (Ho & Salimans 2022; 1 is the conditional model, 0 the
unconditional one), ``--per-class`` samples of every class are drawn with the same seeds. The
project's digit classifier (``bench/digit_classifier.py``) names each one, and *accuracy* is the
share named as the class they were drawn for (for w = 0, where no class is asked for, the share
that happens to match). *FD* is the Fréchet distance of TAESD features (no download,
:class:`catdiff.metrics.TAESDFeatures`) to the held-out digits; ``--train`` adds the FD of as
many training digits, the floor a perfect model would reach. ``--grids`` writes one grid per
scale, a row per class.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from digit_classifier import WEIGHTS, load_digit_classifier, predict
from torchmetrics.image.fid import FrechetInceptionDistance

from catdiff.data.digits import Digits
from catdiff.data.image_folder import uint8_to_float
from catdiff.images import save_grid
from catdiff.metrics import TAESDFeatures
from catdiff.pipeline import Pipeline, pipeline_folder

GRID_COLUMNS = 10


class FrechetToHeldout:
    """The Fréchet distance of grey images to the held-out digits in TAESD feature space (the
    held-out statistics computed once)."""

    def __init__(self, heldout: torch.Tensor) -> None:
        size = (3, *heldout.shape[2:])
        self.metric = FrechetInceptionDistance(
            feature=TAESDFeatures(), reset_real_features=False, normalize=True, input_img_size=size
        )
        for batch in heldout.split(100):
            self.metric.update(batch.expand(-1, 3, -1, -1), real=True)

    def __call__(self, images: torch.Tensor) -> float:
        self.metric.reset()  # the samples only
        for batch in images.split(100):
            self.metric.update(batch.expand(-1, 3, -1, -1), real=False)
        return float(self.metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", help="'digits' (bundled) or a pipeline folder")
    parser.add_argument("heldout", type=Path, help="held-out digits folder")
    parser.add_argument("--train", type=Path, help="training digits folder: also report their FD (the floor)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 1.5, 3, 5])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--steps", type=int, help="default: the pipeline's")
    parser.add_argument("--sampler", help="default: the pipeline's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", type=Path, default=WEIGHTS)
    parser.add_argument("--json", type=Path, help="write the table here")
    parser.add_argument("--grids", type=Path, help="folder for digits-w<scale>.png grids")
    args = parser.parse_args()

    pipeline = Pipeline.from_folder(pipeline_folder(args.pipeline))
    classifier = load_digit_classifier(args.classifier)
    frechet = FrechetToHeldout(uint8_to_float(Digits.from_folder(args.heldout).images))
    labels = torch.arange(pipeline.num_classes).repeat_interleave(args.per_class)
    steps, sampler = args.steps or pipeline.sampling["steps"], args.sampler or pipeline.sampling["sampler"]
    rows = []
    if args.train is not None:
        train = Digits.from_folder(args.train).subset(torch.arange(len(labels)))
        images = uint8_to_float(train.images)
        accuracy = (predict(classifier, images) == train.labels).float().mean().item()
        fd = frechet(images)
        rows.append({"scale": "training digits", "accuracy": accuracy, "fd": fd})
        print(f"training digits: accuracy {accuracy:.1%}, FD {fd:.3f}")
    for scale in args.scales:
        condition = pipeline.class_condition(labels, scale) if scale > 0 else None  # w = 0: the unconditional model
        start = time.perf_counter()
        samples = pipeline.sample(
            len(labels), steps=steps, sampler=sampler, seed=args.seed, batch_size=100, condition=condition
        )
        seconds = time.perf_counter() - start
        correct = predict(classifier, samples) == labels
        per_class = correct.view(pipeline.num_classes, -1).float().mean(dim=1)
        fd = frechet(samples)
        row = {"scale": scale, "accuracy": correct.float().mean().item(), "worst_class": per_class.min().item()}
        row.update(fd=fd, seconds=seconds)
        rows.append(row)
        print(
            f"w={scale:g}: accuracy {row['accuracy']:.1%} (worst class {row['worst_class']:.0%}), FD {fd:.3f},"
            f" {seconds:.0f} s for {len(labels)} samples"
        )
        if args.grids is not None:
            grid = samples.view(pipeline.num_classes, -1, *samples.shape[1:])[:, :GRID_COLUMNS].flatten(0, 1)
            save_grid(grid, args.grids / f"digits-w{scale:g}.png", nrow=GRID_COLUMNS)
    if args.json is not None:
        setup = {"per_class": args.per_class, "steps": steps, "sampler": sampler, "seed": args.seed}
        args.json.write_text(json.dumps({**setup, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
