"""Run the performance benchmarks and write docs/PERFORMANCE.md.

    python bench/performance.py [--out docs/PERFORMANCE.md]

Each section is one script of bench/, run in its own process; the page records each command,
so any row can be repeated alone.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

TRAIN_IMAGES = Path("../shared/data/cat-faces-64")  # the bundled model's data, for Fréchet distances


def sections() -> list[tuple[str, list[str]]]:
    quality = ["bench/steps_to_quality.py", "--model", "cats", "--n", "32", "--steps", "5", "10", "15", "20", "50"]
    quality += ["--ddim-spacings", "trailing"]
    if TRAIN_IMAGES.is_dir():
        quality += ["--train", str(TRAIN_IMAGES)]
    return [
        (
            "(a) Denoiser: ours against diffusers' UNet2DModel of the same architecture",
            ["bench/denoiser_vs_diffusers.py"],
        ),
        ("(b) Whole pipeline, bundled model, default sampler and steps", ["bench/pipeline_throughput.py"]),
        ("(c) Achieved FLOP/s of the denoiser against the matmul peak", ["bench/denoiser_flops.py"]),
        ("(d) Steps to quality, bundled model", quality),
    ]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/PERFORMANCE.md"))
    args = parser.parse_args()
    began = time.perf_counter()
    parts = [
        "# Performance\n",
        "Written by `python bench/performance.py` on"
        f" {cpu_name()}, {torch.get_num_threads()} threads, no GPU; PyTorch {torch.__version__}.\n",
    ]
    for title, command in sections():
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=True)
        parts += [f"## {title}\n", f"```bash\npython {' '.join(command)}\n```\n", result.stdout.strip() + "\n"]
        print(f"{title}: done", file=sys.stderr, flush=True)
    parts.append(f"(The whole benchmark took {(time.perf_counter() - began) / 60:.1f} minutes.)\n")
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
