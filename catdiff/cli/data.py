"""``catdiff encode`` and ``catdiff split``."""

from __future__ import annotations

import argparse
from pathlib import Path

from catdiff.cli.options import DATA_HELP, add_device_option, positive_int


def add_parsers(commands: argparse._SubParsersAction) -> None:
    add_encode_parser(commands)
    add_split_parser(commands)


def add_encode_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "encode",
        help="encode an image folder into a latent cache",
        description="Encode a folder of images once into sharded latents for training (resumable).",
    )
    p.add_argument("data", type=Path, help=DATA_HELP)
    p.add_argument("--out", type=Path, required=True, help="latent cache folder")
    p.add_argument(
        "--autoencoder",
        default="taesd",
        help="'taesd' (bundled), an SD-1.x VAE file or folder, or a catdiff autoencoder folder",
    )
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels before encoding")
    p.add_argument("--no-flip", action="store_true", help="do not also encode the mirrored images")
    p.add_argument("--shard-size", type=positive_int, default=1024, help="images per shard file")
    p.add_argument("--batch-size", type=positive_int, default=32)
    add_device_option(p, "encode on")
    p.set_defaults(run=run_encode)


def run_encode(args: argparse.Namespace) -> None:
    from catdiff.autoencoders import load_autoencoder
    from catdiff.data.sources import encode_data
    from catdiff.io.run_lock import FolderLock

    with FolderLock(args.out, "latent cache"):
        count = encode_data(
            args.data,
            args.out,
            load_autoencoder(args.autoencoder),
            source=str(args.autoencoder),
            size=args.size,
            flip=not args.no_flip,
            device=args.device,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            progress=None,
        )
    print(f"encoded {count} images into {args.out}")


def add_split_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "split",
        help="split an image folder into train/ and heldout/",
        description=(
            "Split an image folder into OUT/train and OUT/heldout (symbolic links, nothing copied),"
            " or a digits folder into two digits folders."
        ),
    )
    p.add_argument("data", type=Path, help=DATA_HELP)
    p.add_argument("--out", type=Path, required=True, help="folder to hold train/ and heldout/")
    p.add_argument("--heldout", type=positive_int, required=True, help="number of images to hold out")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.set_defaults(run=run_split)


def run_split(args: argparse.Namespace) -> None:
    from catdiff.data.sources import split_data

    train, heldout = split_data(args.data, args.out, heldout=args.heldout, seed=args.seed)
    print(f"wrote {train} and {heldout} ({args.heldout} held out)")
