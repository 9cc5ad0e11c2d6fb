"""Denoiser throughput: our general U-Net against diffusers' UNet2DModel of the same architecture.

    python bench/denoiser_vs_diffusers.py --recipe catdiff/recipes/cats-128-taesd.json --channels 4 --size 16 --batch 16

Both networks are built in this one process from the recipe's U-Net (channels, levels,
residual blocks, attention levels, scale-shift time conditioning), their parameter counts are
printed, and their forward passes (inference, as sampling runs them) are timed alternately,
in fp32 and in bf16 autocast; the ratio is ours / diffusers'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from torch import nn

from catdiff.models import build_model


def diffusers_twin(config: dict, channels: int, size: int) -> nn.Module:
    """diffusers' UNet2DModel laid out like our ``UNet`` with the same config."""
    from diffusers import UNet2DModel

    mult, attention = config["channel_mult"], set(config["attention_levels"])
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(len(mult)))
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(len(mult))))
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(m * config["base_channels"] for m in mult),
        layers_per_block=config["num_res_blocks"],
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=config.get("attention_head_dim", 64),
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=config.get("groups", 32),
    )


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("catdiff/recipes/cats-128-taesd.json"))
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = {"base_channels": 64, "num_res_blocks": 2, **json.loads(args.recipe.read_text())["model"]}
    torch.manual_seed(0)
    ours = build_model({**config, "in_channels": args.channels, "out_channels": args.channels}).eval()
    theirs = diffusers_twin(config, args.channels, args.size).eval()
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    t = torch.full((args.batch,), 500.0)
    runs = {"ours": lambda: ours(x, t), "diffusers": lambda: theirs(x, t).sample}
    print(f"parameters: ours {parameters(ours) / 1e6:.3f}M, diffusers {parameters(theirs) / 1e6:.3f}M")
    print(f"device: cpu, {torch.get_num_threads()} threads; input {tuple(x.shape)}\n")
    print("| precision | ours img/s | diffusers img/s | ours / diffusers |\n|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        best = {name: float("inf") for name in runs}
        with torch.inference_mode(), autocast:
            for name in runs:
                runs[name]()  # warm-up
            for _ in range(args.repeats):
                for name, run in runs.items():
                    began = time.perf_counter()
                    run()
                    best[name] = min(best[name], time.perf_counter() - began)
        rate = {name: args.batch / seconds for name, seconds in best.items()}
        print(
            f"| {precision} | {rate['ours']:.1f} | {rate['diffusers']:.1f} | {rate['ours'] / rate['diffusers']:.2f} |"
        )


if __name__ == "__main__":
    main()
