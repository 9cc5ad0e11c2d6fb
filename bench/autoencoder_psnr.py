"""Round-trip PSNR of an autoencoder on an image folder, and a grid of originals over reconstructions.

    python bench/autoencoder_psnr.py taesd ../shared/data/cat-faces-64 --size 128
    python bench/autoencoder_psnr.py runs/ae/checkpoints/step-0001000 ../shared/data/cat-photos-200 --size 64 --grid docs/img/ae.png

PSNR is the mean over images of 10 log10(1 / MSE) with pixels in [0, 1], on ``--n`` images
taken evenly across the folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from catdiff.autoencoders import load_autoencoder
from catdiff.data.image_folder import ImageFolder
from catdiff.images import save_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("autoencoder", help="'taesd', an autoencoder folder or a VAE file")
    parser.add_argument("data", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--grid", type=Path, help="write 8 originals over their reconstructions here")
    args = parser.parse_args()
    autoencoder = load_autoencoder(args.autoencoder)
    dataset = ImageFolder(args.data, args.size)
    step = max(1, len(dataset) // args.n)
    images = torch.stack([dataset[i] for i in range(0, len(dataset), step)][: args.n])
    with torch.inference_mode():
        reconstructions = torch.cat([autoencoder.decode(autoencoder.encode(b)) for b in images.split(32)]).clamp(-1, 1)
    mse = ((reconstructions - images) / 2).pow(2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    print(f"{args.autoencoder} on {args.data} at {args.size} px: {psnr:.2f} dB over {len(images)} images")
    if args.grid:
        save_grid(torch.cat([images[:8], reconstructions[:8]]), args.grid, nrow=8)


if __name__ == "__main__":
    main()
