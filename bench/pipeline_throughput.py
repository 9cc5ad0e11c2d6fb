"""Whole-pipeline speed of a pipeline at its default sampling, against a baseline, side by side.

    python bench/pipeline_throughput.py --model cats --baseline runs/cats-old --n 16

Times ``Pipeline.sample`` (denoiser steps and autoencoder decoding, one batch of ``n``) of the
baseline in fp32 and of the model in fp32 and bf16 autocast, with its guide (its default) and
without; the decoder alone in both precisions and memory formats, with the PSNR of the bf16
decode against the fp32 one; and `catdiff generate --n N` end to end in a fresh process
(start-up, loading, sampling, writing the PNG), as a user runs it: the baseline with
``--precision fp32``, the model with its defaults. Each figure is the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from catdiff.pipeline import Pipeline, pipeline_folder
from catdiff.precision import resolve_precision


def best_time(run: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


def generate_seconds(model: str, n: int, repeats: int, *options: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "catdiff", "generate", "--model", model, "--n", str(n), *options]
        command += ["--out", str(Path(folder) / "cats.png")]
        return best_time(lambda: subprocess.run(command, check=True, capture_output=True), repeats)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Of images in [-1, 1], as 8-bit pixels would be compared (peak 2)."""
    return float(10 * torch.log10(4 / (a - b).square().mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--baseline", help="the pipeline to compare with (default: none)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipeline = Pipeline.from_folder(pipeline_folder(args.model))
    sampling = pipeline.sampling
    print(f"{args.model}: {sampling}; n = {args.n}; auto precision here: {resolve_precision('auto')}\n")
    print("| what | precision | seconds | images/s |\n|---|---|---|---|")

    def row(what: str, precision: str, seconds: float) -> None:
        print(f"| {what} | {precision} | {seconds:.3f} | {args.n / seconds:.1f} |", flush=True)

    runs: list[tuple[str, Pipeline, dict]] = []
    if args.baseline is not None:
        runs.append(("baseline: Pipeline.sample", Pipeline.from_folder(pipeline_folder(args.baseline)), {}))
    runs.append(("Pipeline.sample, default", pipeline, {}))
    if pipeline.guide is not None:
        runs.append(("Pipeline.sample, no guide", pipeline, {"condition": pipeline.autoguidance(1)}))
    with torch.inference_mode():
        for what, model, options in runs:
            for precision in ("fp32",) if what.startswith("baseline") else ("fp32", "bf16"):
                model.sample(args.n, batch_size=args.n, precision=precision, **options)  # warm-up
                seconds = best_time(
                    lambda model=model, precision=precision, options=options: model.sample(
                        args.n, batch_size=args.n, precision=precision, **options
                    ),
                    args.repeats,
                )
                row(what, precision, seconds)
        if pipeline.autoencoder is not None:
            latents = torch.randn(args.n, *pipeline.sample_shape, generator=torch.Generator().manual_seed(0))
            decoded = {}
            module = pipeline.autoencoder.module
            for layout in (torch.contiguous_format, torch.channels_last):
                module.to(memory_format=layout)
                for precision in ("fp32", "bf16"):
                    decoded[precision] = pipeline.decode(latents, precision)
                    seconds = best_time(lambda precision=precision: pipeline.decode(latents, precision), args.repeats)
                    name = "channels-last" if layout == torch.channels_last else "NCHW"
                    row(f"decode only, {name}", precision, seconds)
            print(f"\nPSNR of the bf16 decode against fp32: {psnr(decoded['bf16'], decoded['fp32']):.1f} dB\n")
    print("| `catdiff generate`, fresh process | options | seconds | images/s |\n|---|---|---|---|")
    if args.baseline is not None:
        seconds = generate_seconds(args.baseline, args.n, args.repeats, "--precision", "fp32")
        print(f"| baseline | --precision fp32 | {seconds:.2f} | {args.n / seconds:.1f} |", flush=True)
    seconds = generate_seconds(args.model, args.n, args.repeats)
    print(f"| {args.model} | (defaults) | {seconds:.2f} | {args.n / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
