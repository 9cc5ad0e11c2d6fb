"""Steps to quality: each sampler at a few step counts against a 1,000-step reference.

    python bench/steps_to_quality.py --model cats --n 128 --steps 5 10 20 50 --train data/split/train

For the same initial noise (seed), every sampler's images are compared with those of 1,000
DDIM steps (the probability-flow ODE solved finely): the RMS pixel difference in [-1, 1]
units (for stochastic samplers this also measures their own noise, so it cannot reach 0), and
the Fréchet distance of the samples to the training images in TAESD features (needs no download).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from catdiff.data import ImageFolder, uint8_to_float
from catdiff.diffusion.samplers import SAMPLERS
from catdiff.metrics import TAESDFeatures, feature_distances
from catdiff.pipeline import Pipeline, pipeline_folder

NFE_PER_STEP = {"heun": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--samplers", nargs="+", default=sorted(SAMPLERS))
    parser.add_argument("--spacing", default=None, help="default: the model's")
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--train", type=Path, help="training images, for the Fréchet distance")
    parser.add_argument("--max-train", type=int, default=2000)
    args = parser.parse_args()

    pipeline = Pipeline.from_folder(pipeline_folder(args.model))
    options = {"seed": 0, "batch_size": args.n, "spacing": args.spacing}
    began = time.perf_counter()
    reference = pipeline.sample(args.n, steps=args.reference_steps, sampler="ddim", **options)
    print(f"reference: {args.reference_steps} DDIM steps in {time.perf_counter() - began:.0f} s\n")
    features, train = TAESDFeatures(), None
    if args.train is not None:
        images = ImageFolder(args.train, 64, preload=True).images
        train = uint8_to_float(images[:: max(1, -(-len(images) // args.max_train))])
        print(
            f"Fréchet distance of the reference: {feature_distances(train, reference, features, kid=False).frechet:.2f}\n"
        )
    print("| sampler | steps | network evaluations | RMS difference from the reference | Fréchet distance | s |")
    print("|---|---|---|---|---|---|")
    for name in args.samplers:
        for steps in args.steps:
            began = time.perf_counter()
            images = pipeline.sample(args.n, steps=steps, sampler=name, **options)
            seconds = time.perf_counter() - began
            rms = float((images - reference).pow(2).mean().sqrt())
            frechet = "" if train is None else f"{feature_distances(train, images, features, kid=False).frechet:.2f}"
            nfe = steps * NFE_PER_STEP.get(name, 1) - (1 if name == "heun" else 0)
            print(f"| {name} | {steps} | {nfe} | {rms:.4f} | {frechet} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
