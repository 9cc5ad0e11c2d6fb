"""Training throughput (images/s) of the denoisers of recipes, one process, fp32 and bf16 autocast.

    python bench/train_throughput.py catdiff/recipes/pixel-cats-32.json --channels 3 --size 32
    python bench/train_throughput.py catdiff/recipes/cats-128-taesd.json --channels 4 --size 16 --precision fp32 bf16

Times forward + backward + AdamW steps on random data of the recipe's shape, after warm-up.
(bf16's accuracy cost is measured on trained networks, in bench/steps_to_quality.py.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from catdiff.models import build_model


def autocast(precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def images_per_second(recipe: dict, channels: int, size: int, steps: int, precision: str) -> tuple[float, int]:
    """(img/s, parameters) for one recipe."""
    batch = recipe["batch_size"]
    torch.manual_seed(0)
    model = build_model({"in_channels": channels, "out_channels": channels, **recipe["model"]})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t = torch.randn(batch, channels, size, size), torch.rand(batch) * 999
    timings = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(precision):
            loss = model(x, t).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - start)
    return batch / min(timings[1:]), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--channels", type=int, default=3, help="3 for pixels, 4 for latents")
    parser.add_argument("--size", type=int, help="side of the (latent) images; default: the recipe's size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    args = parser.parse_args()
    print("| recipe | input | parameters | threads | precision | img/s |")
    print("|---|---|---|---|---|---|")
    for path in args.recipes:
        recipe = json.loads(path.read_text())
        size = args.size or recipe["size"]
        for precision in args.precision:
            rate, params = images_per_second(recipe, args.channels, size, args.steps, precision)
            print(
                f"| {path.name} | {args.channels}x{size}x{size} | {params / 1e6:.1f}M | {torch.get_num_threads()} |"
                f" {precision} | {rate:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
