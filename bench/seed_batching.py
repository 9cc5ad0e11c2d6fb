"""Per-image seeds under batching: the largest difference between image i of one call of n = 8
at batch size 8, at batch size 3 and alone (n = 1, seed S + i), per sampler and precision.

    python bench/seed_batching.py --model cats --steps 10

In fp32 the images agree to float rounding (the tests assert 1e-5 on a tiny model); in bf16 the
network's batched matmuls round differently with the batch size, and this prints by how much.
"""

from __future__ import annotations

import argparse

import torch

from catdiff.pipeline import Pipeline, pipeline_folder

STOCHASTIC = [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp_2m_sde", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    pipeline = Pipeline.from_folder(pipeline_folder(args.model))
    print("| sampler | precision | max diff, batch 3 vs 8 | max diff, alone vs batch 8 |")
    print("|---|---|---|---|")
    for sampler, options in STOCHASTIC:
        for precision in args.precisions:
            settings = {"steps": args.steps, "sampler": sampler, "sampler_options": options, "precision": precision}
            whole = pipeline.sample(8, seed=args.seed, batch_size=8, **settings)
            threes = pipeline.sample(8, seed=args.seed, batch_size=3, **settings)
            alone = torch.cat([pipeline.sample(1, seed=args.seed + i, **settings) for i in range(8)])
            print(
                f"| {sampler} | {precision} | {(threes - whole).abs().max():.2e} | {(alone - whole).abs().max():.2e} |"
            )


if __name__ == "__main__":
    main()
