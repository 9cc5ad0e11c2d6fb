"""Achieved FLOP/s of the denoiser against this machine's measured matmul peak.

    python bench/denoiser_flops.py --recipe catdiff/recipes/cats-128-taesd.json --channels 4 --size 16 --batch 64

The FLOPs of one forward pass are counted by PyTorch's FlopCounterMode (convolutions, matmuls,
attention); the peak is the best rate of a large square matmul in the same precision and thread
count. Their ratio says how far sampling is from what the hardware can do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from catdiff.models import build_model


def best_seconds(fn, repeats: int) -> float:
    fn()
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - began)
    return min(timings)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("catdiff/recipes/cats-128-taesd.json"))
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = json.loads(args.recipe.read_text())["model"]
    network = build_model({**config, "in_channels": args.channels, "out_channels": args.channels}).eval()
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    t = torch.full((args.batch,), 500.0)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(x, t)
    flops = counter.get_total_flops()
    print(f"{flops / args.batch / 1e9:.3f} GFLOP per image; {torch.get_num_threads()} threads\n")
    print("| precision | denoiser TFLOP/s | matmul peak TFLOP/s | fraction of peak |\n|---|---|---|---|")
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            achieved = flops / best_seconds(lambda: network(x, t), args.repeats)
        peak = matmul_peak(dtype)
        print(f"| {precision} | {achieved / 1e12:.3f} | {peak / 1e12:.3f} | {achieved / peak:.2f} |")


if __name__ == "__main__":
    main()
