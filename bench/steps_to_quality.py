"""Steps to quality: each sampler at a few step counts against a 1,000-step reference.

    python bench/steps_to_quality.py --model cats --n 32 --steps 5 10 20 50 --train data/split/train

For the same initial noise (seed), every sampler's images are compared with those of 1,000
DDIM steps on every trained timestep (the probability-flow ODE solved finely;
``--check-reference`` also prints how far the same on the Karras grid lands from it): the RMS
pixel difference in [-1, 1] units (for stochastic samplers this also measures their own noise,
so it cannot reach 0), and the Fréchet distance of the samples to the training images in TAESD
features (needs no download). Prints a Markdown table, then the model's default against the
best 50-step DDIM of the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from catdiff.data.image_folder import ImageFolder, uint8_to_float
from catdiff.diffusion.samplers import SAMPLERS
from catdiff.diffusion.schedule import SIGMA_SPACINGS
from catdiff.metrics import FrechetToReference, TAESDFeatures
from catdiff.pipeline import Pipeline, pipeline_folder


def network_evaluations(sampler: str, steps: int) -> int:
    """One a step; Heun evaluates twice per step, except on the last step to sigma = 0."""
    return 2 * steps - 1 if sampler == "heun" else steps


def rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--samplers", nargs="+", default=sorted(SAMPLERS))
    parser.add_argument("--spacings", nargs="+", choices=SIGMA_SPACINGS, help="default: the model's")
    parser.add_argument("--ddim-spacings", nargs="*", default=[], choices=SIGMA_SPACINGS, help="more grids for DDIM")
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--check-reference", action="store_true", help="also solve the reference on the Karras grid")
    parser.add_argument("--train", type=Path, help="training images, for the Fréchet distance")
    parser.add_argument("--max-train", type=int, default=2000)
    args = parser.parse_args()

    pipeline = Pipeline.from_folder(pipeline_folder(args.model))
    default = pipeline.sampling
    spacings = args.spacings or [default["spacing"]]

    def sample(sampler: str, steps: int, spacing: str) -> Tensor:
        return pipeline.sample(args.n, steps=steps, sampler=sampler, spacing=spacing, seed=0, batch_size=args.n)

    began = time.perf_counter()
    reference = sample("ddim", args.reference_steps, "trailing")
    seconds = time.perf_counter() - began
    print(f"reference: {args.reference_steps} DDIM steps on the trailing grid in {seconds:.0f} s\n")
    if args.check_reference:
        check = rms(sample("ddim", args.reference_steps, "karras"), reference)
        print(f"the same on the Karras grid lands {check:.4f} RMS from it\n")
    frechet = None
    if args.train is not None:
        images = ImageFolder(args.train, 64, preload=True).images
        train = uint8_to_float(images[:: max(1, -(-len(images) // args.max_train))])
        frechet = FrechetToReference(train, TAESDFeatures())
        print(
            f"Fréchet distance of the reference: {frechet(reference):.2f} ({args.n} samples, {len(train)} training images)\n"
        )
    print(
        "| sampler | spacing | steps | network evaluations | RMS difference from the reference | Fréchet distance | s |"
    )
    print("|---|---|---|---|---|---|---|")
    runs = [(name, spacing) for name in args.samplers for spacing in spacings]
    runs += [("ddim", spacing) for spacing in args.ddim_spacings if spacing not in spacings]
    found = {}
    for name, spacing in runs:
        for steps in args.steps:
            began = time.perf_counter()
            images = sample(name, steps, spacing)
            seconds = time.perf_counter() - began
            found[name, spacing, steps] = distance = rms(images, reference)
            quality = "" if frechet is None else f"{frechet(images):.2f}"
            print(
                f"| {name} | {spacing} | {steps} | {network_evaluations(name, steps)} | {distance:.4f} | {quality} | {seconds:.1f} |",
                flush=True,
            )
    ddim50 = {spacing: d for (name, spacing, steps), d in found.items() if name == "ddim" and steps == 50}
    key = (default["sampler"], default["spacing"], default["steps"])
    if ddim50 and key in found:
        best = min(ddim50, key=ddim50.get)
        print(
            f"\nThe default, {key[0]} with {key[2]} steps on the {key[1]} grid"
            f" ({network_evaluations(key[0], key[2])} network evaluations): RMS {found[key]:.4f};"
            f" the best 50-step DDIM here ({best} grid): {ddim50[best]:.4f}."
        )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
