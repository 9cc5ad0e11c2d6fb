"""``catdiff eval``: feature distances and memorisation of samples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from catdiff.cli.options import add_device_option, add_sampler_options, check_writable, positive_int


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval",
        help="compare generated samples with the training images",
        description=(
            "Fréchet distance (and KID) of samples to the training images, and memorisation:"
            " how close samples come to training images, against held-out images."
        ),
    )
    p.add_argument("samples", help="a folder of sample images, or a model to sample (bundled name, pipeline, run)")
    p.add_argument("--train", type=Path, required=True, help="folder of the training images")
    p.add_argument("--heldout", type=Path, help="folder of images held out of training (for memorisation)")
    p.add_argument("--n", type=positive_int, default=500, help="samples to generate from a model")
    add_sampler_options(p)
    p.add_argument("--seed", type=int, default=0)
    add_device_option(p, "sample a model on")
    p.add_argument("--max-train", type=positive_int, default=2000, help="training images to compare with, at most")
    p.add_argument("--inception", type=Path, help="Inception weights file for FID/KID proper (default: TAESD features)")
    p.add_argument("--json", type=Path, help="also write the report to this JSON file")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    from catdiff.metrics import evaluate_folders

    if args.json is not None:
        check_writable(args.json)
    sampling = {"steps": args.steps, "sampler": args.sampler, "spacing": args.spacing, "seed": args.seed}
    report = evaluate_folders(
        args.samples,
        args.train,
        args.heldout,
        max_train=args.max_train,
        inception=args.inception,
        n=args.n,
        device=args.device,
        **sampling,
    )
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
