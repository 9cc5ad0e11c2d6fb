"""Autoguidance settings of a model, by Fréchet distance and memorisation, as a Markdown table.

    python bench/autoguidance_sweep.py runs/x10 --guide runs/x10/checkpoints/step-0002000 \
        --settings 1 3 5:0:1 8:0:0.8 3:1:inf --seeds 0 1000
    python bench/autoguidance_sweep.py cats --guide runs/guide/checkpoints/step-0002000 \
        --train data/faces-split/train --heldout data/faces-split/heldout --n 500

Each setting is ``W`` (guided at every step) or ``W:LOW:HIGH`` (guided where the noise level,
VE sigma, lies in [LOW, HIGH]; Kynkäänniemi et al. 2024); ``1`` is no guidance. The run's
newest checkpoint (EMA) is guided by ``--guide`` (any model of the same latent shape and
prediction: an earlier checkpoint, another run), or by the run's own ``guide/`` without it.
Samples are compared, as ``catdiff train``'s report does, with the run's references: up to
2,000 training images and the held-out ones of its ``heldout.json``. Any other model (a bundled
name, a pipeline folder) is compared, as ``catdiff eval`` does, with ``--train`` and ``--heldout``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from catdiff.metrics import FrechetToReference, TAESDFeatures, memorisation, read_images
from catdiff.pipeline import Pipeline, load_network, network_folder, pipeline_folder
from catdiff.training.report import References, eval_samples


def setting(text: str) -> tuple[float, float, float]:
    parts = [float(part) for part in text.split(":")]
    return (parts[0], 0.0, math.inf) if len(parts) == 1 else (parts[0], parts[1], parts[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder of catdiff train on an image folder, or any model with --train")
    parser.add_argument(
        "--guide",
        type=Path,
        help="the guide: a model, checkpoint, run, pipeline or a bare guide/ folder (default: the model's own guide/)",
    )
    parser.add_argument("--settings", nargs="+", type=setting, default=[setting("1"), setting("8:0:0.8")])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1000])
    parser.add_argument("--n", type=int, help="samples per setting and seed (default: as the run's report)")
    parser.add_argument("--train", type=Path, help="training images (instead of a run's own references)")
    parser.add_argument("--heldout", type=Path, help="with --train: the held-out images")
    args = parser.parse_args()

    if args.train is not None:
        train = read_images(args.train, at_most=2000)
        references = References(train, read_images(args.heldout), FrechetToReference(train, TAESDFeatures()))
        n = args.n or 500
    else:
        held = json.loads((Path(args.model) / "heldout.json").read_text())
        references = References.of(Path(held["folder"]), held["files"])
        n = args.n or eval_samples(len(held["files"]))
    pipeline = Pipeline.from_folder(pipeline_folder(args.model))
    if args.guide is not None:
        pipeline.guide = load_network(network_folder(args.guide), ema=True)[0]
    print(f"| w | guided where (sigma) | seed | FD ({n} samples) | memorised | nearest-train ratio | s |")
    print("|---|---|---|---|---|---|---|")
    for w, low, high in args.settings:
        pipeline.sampling.update(guidance=w, guidance_interval=[low, high])
        for seed in args.seeds:
            start = time.perf_counter()
            images = pipeline.sample(n, seed=seed).cpu()
            seconds = time.perf_counter() - start
            copies = memorisation(images, references.train, references.heldout)
            print(
                f"| {w:g} | {low:g}..{high:g} | {seed} | {references.frechet(images):.4f} "
                f"| {copies.fraction_closer:.3f} | {copies.median_ratio:.3f} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
