"""Finish a trained digits autoencoder: fit its latent scale and measure its round trip.

    python bench/digits_autoencoder.py /work/runs/digits/autoencoder /work/runs/digits/data/train \
        /work/runs/digits/data/heldout --out /work/runs/digits/autoencoder-final --grid docs/img/digits-autoencoder.png

Like SD's 0.18215 (Rombach et al. 2022, sec. 4.3.2 and G), ``scaling_factor`` is one over the
standard deviation of the training digits' latents (the posterior means), so that diffusion
sees latents of about unit variance; the autoencoder folder written to ``--out`` carries it.
PSNR is the mean over the held-out digits of 10 log10(1 / MSE), pixels in [0, 1], on the
28 x 28 digit (the 2-pixel padding left out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from catdiff.data.digits import PAD, Digits
from catdiff.data.image_folder import uint8_to_float
from catdiff.images import save_grid
from catdiff.io.checkpoints import resolve_model_folder, write_model_folder
from catdiff.models import AutoencoderKL, build_model, model_config
from catdiff.pipeline import load_network


@torch.inference_mode()
def latent_std(autoencoder: AutoencoderKL, images: torch.Tensor) -> float:
    return torch.cat([autoencoder.encode(batch).mean for batch in images.split(256)]).std().item()


@torch.inference_mode()
def round_trip(autoencoder: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([autoencoder.decode(autoencoder.encode(b).mean) for b in images.split(256)]).clamp(-1, 1)


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> float:
    crop = (..., slice(PAD, -PAD), slice(PAD, -PAD))
    mse = ((reconstructions[crop] - images[crop]) / 2).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(1 / mse)).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("autoencoder", type=Path, help="run folder (newest checkpoint) or checkpoint")
    parser.add_argument("train", type=Path, help="digits folder the autoencoder was trained on")
    parser.add_argument("heldout", type=Path, help="held-out digits folder")
    parser.add_argument("--out", type=Path, required=True, help="autoencoder folder to write")
    parser.add_argument("--grid", type=Path, help="write 10 held-out digits over their reconstructions here")
    args = parser.parse_args()
    autoencoder, _ = load_network(resolve_model_folder(args.autoencoder), ema=True)
    std = latent_std(autoencoder, uint8_to_float(Digits.from_folder(args.train).images))
    config = {**model_config(autoencoder), "scaling_factor": 1 / std}
    scaled = build_model(config)
    scaled.load_state_dict(autoencoder.state_dict())
    write_model_folder(args.out, {"model": config}, scaled.state_dict())
    heldout = uint8_to_float(Digits.from_folder(args.heldout).images)
    reconstructions = round_trip(autoencoder, heldout)
    print(f"latent std {std:.4f} -> scaling_factor {1 / std:.4f}; wrote {args.out}")
    print(f"held-out PSNR {psnr(heldout, reconstructions):.2f} dB over {len(heldout)} digits")
    if args.grid:
        save_grid(torch.cat([heldout[:10], reconstructions[:10]]), args.grid, nrow=10)


if __name__ == "__main__":
    main()
