"""Whole-pipeline images/s of a pipeline at its default sampler and steps (noise -> latents -> pixels).

    python bench/pipeline_throughput.py --model cats --n 16

Times ``Pipeline.sample`` (denoiser steps and autoencoder decoding, one batch of ``n``) in fp32
and bf16 autocast, best of ``--repeats``, and `catdiff generate` end to end in a fresh process
(start-up, loading, sampling, writing the PNG), as a user runs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from catdiff.pipeline import Pipeline, pipeline_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pipeline = Pipeline.from_folder(pipeline_folder(args.model))
    sampling = pipeline.sampling
    print(
        f"{args.model}: {sampling['sampler']}, {sampling['steps']} steps, {sampling['spacing']} spacing; n = {args.n}\n"
    )
    print("| what | precision | seconds | images/s |\n|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        best = float("inf")
        for _ in range(args.repeats):
            began = time.perf_counter()
            pipeline.sample(args.n, batch_size=args.n, precision=precision)
            best = min(best, time.perf_counter() - began)
        print(f"| Pipeline.sample | {precision} | {best:.2f} | {args.n / best:.1f} |", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "catdiff", "generate", "--model", args.model, "--n", str(args.n)]
        began = time.perf_counter()
        subprocess.run([*command, "--out", str(Path(folder) / "cats.png")], check=True, capture_output=True)
        seconds = time.perf_counter() - began
    print(f"| `catdiff generate --n {args.n}`, fresh process | fp32 | {seconds:.2f} | {args.n / seconds:.1f} |")


if __name__ == "__main__":
    main()
