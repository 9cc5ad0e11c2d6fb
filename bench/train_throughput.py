"""Training throughput (images/s) of the denoisers of the recipes, one process, fp32.

    python bench/train_throughput.py recipes/pixel-cats-32.json recipes/pixel-cats-32-seed.json

Times forward + backward + AdamW steps on random data of the recipe's shape, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from catdiff.models import build_model


def images_per_second(recipe: dict, channels: int, size: int, steps: int) -> tuple[float, int]:
    batch = recipe["batch_size"]
    model = build_model({"in_channels": channels, "out_channels": channels, **recipe["model"]})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t = torch.randn(batch, channels, size, size), torch.rand(batch) * 999
    timings = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model(x, t).square().mean().backward()
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
    args = parser.parse_args()
    print("| recipe | parameters | threads | img/s |\n|---|---|---|---|")
    for path in args.recipes:
        recipe = json.loads(path.read_text())
        rate, params = images_per_second(recipe, args.channels, args.size or recipe["size"], args.steps)
        print(f"| {path.name} | {params / 1e6:.1f}M | {torch.get_num_threads()} | {rate:.1f} |")


if __name__ == "__main__":
    main()
