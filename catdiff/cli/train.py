"""``catdiff train`` and ``catdiff train-autoencoder``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from catdiff.cli.options import DATA_HELP, int_list, positive_int
from catdiff.errors import UserError
from catdiff.io.json_files import read_json

log = logging.getLogger("catdiff")

# CLI flag -> TrainConfig field, for options that map one to one.
TRAIN_FLAGS = {
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "lr": "lr",
    "warmup": "warmup_steps",
    "lr_schedule": "lr_schedule",
    "prediction": "prediction",
    "min_snr": "min_snr_gamma",
    "mixed_precision": "mixed_precision",
    "checkpoint_every": "checkpoint_every",
    "keep": "keep_checkpoints",
    "preview_every": "preview_every",
    "log_every": "log_every",
    "seed": "seed",
    "ema_max_decay": "ema_max_decay",
    "kl_weight": "kl_weight",
}
# CLI flag -> model config field.
MODEL_FLAGS = {
    "channels": "base_channels",
    "channel_mult": "channel_mult",
    "attention_levels": "attention_levels",
    "res_blocks": "num_res_blocks",
    "dropout": "dropout",
    "block_channels": "block_out_channels",
    "layers_per_block": "layers_per_block",
    "latent_channels": "latent_channels",
    "norm_groups": "norm_groups",
}
SIZE_HELP = "train at this resolution (resize + center crop); default 32"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    add_train_parser(commands)
    add_train_autoencoder_parser(commands)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every training sub-command."""
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, previews, log.jsonl")
    p.add_argument("--config", type=Path, help="JSON recipe of training options; flags override it")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--batch-size", type=positive_int, help="per process")
    p.add_argument("--grad-accum", type=positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="LR warm-up steps")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"))
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"))
    p.add_argument("--ema-max-decay", type=float)
    p.add_argument("--checkpoint-every", type=positive_int)
    p.add_argument("--keep", type=positive_int, help="checkpoints to keep")
    p.add_argument("--preview-every", type=int, help="steps between preview grids (0: none)")
    p.add_argument("--log-every", type=positive_int)
    p.add_argument("--seed", type=int)
    p.add_argument("--size", type=positive_int, help=SIZE_HELP)
    p.set_defaults(run=run_train, autoencoder=None, model=None, schedule=None, **{flag: None for flag in MODEL_FLAGS})


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a denoiser on a folder of images",
        description="Train a diffusion model on a folder of images or a latent cache.",
    )
    p.add_argument(
        "data",
        type=Path,
        help="folder of images (searched recursively), digits folder (MNIST IDX files), or latent cache (`catdiff encode`)",
    )
    add_training_options(p)
    p.add_argument("--autoencoder", help="with a latent cache: refuse it unless it was made with this autoencoder")
    p.add_argument("--model", choices=("unet", "seed_unet", "class_unet"), help="denoiser architecture (default unet)")
    p.add_argument("--channels", type=positive_int, help="base channel width of the denoiser")
    p.add_argument("--channel-mult", type=int_list, help="unet channel multipliers, e.g. 1,2,2")
    p.add_argument(
        "--attention-levels", type=int_list, help="unet levels (0 = full resolution) with self-attention, e.g. 2,3"
    )
    p.add_argument("--res-blocks", type=positive_int, help="unet residual blocks per level")
    p.add_argument("--dropout", type=float)
    p.add_argument("--schedule", choices=("linear", "scaled_linear", "cosine"), help="beta schedule (default linear)")
    p.add_argument("--prediction", choices=("eps", "v", "x0"), help="network target (default eps)")
    p.add_argument("--min-snr", type=float, help="min-SNR-gamma loss weighting, e.g. 5")


def add_train_autoencoder_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train-autoencoder",
        help="train a small AutoencoderKL on a folder of images",
        description="Train a KL autoencoder (reconstruction + KL) whose latents a diffusion model can then learn.",
    )
    p.add_argument("data", type=Path, help=DATA_HELP)
    add_training_options(p)
    p.add_argument(
        "--block-channels", type=int_list, help="channels per level, e.g. 32,64,64 (3 levels: 4x down-sampling)"
    )
    p.add_argument("--layers-per-block", type=positive_int)
    p.add_argument("--latent-channels", type=positive_int)
    p.add_argument("--norm-groups", type=positive_int)
    p.add_argument("--kl-weight", type=float, help="weight of the KL term against the per-pixel MSE (default 1e-6)")
    p.set_defaults(model="autoencoder_kl")


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """Recipe file, then flags on top."""
    options: dict[str, Any] = {} if args.config is None else read_json(args.config, what="recipe")
    model = dict(options.get("model", {"type": "unet"}))
    if args.model is not None and args.model != model.get("type"):
        model = {"type": args.model}
    for flag, name in MODEL_FLAGS.items():
        if getattr(args, flag, None) is not None:
            model[name] = getattr(args, flag)
    options["model"] = model
    for flag, name in TRAIN_FLAGS.items():
        if getattr(args, flag, None) is not None:
            options[name] = getattr(args, flag)
    if args.schedule is not None:
        from catdiff.diffusion.schedule import NoiseSchedule

        options["schedule"] = NoiseSchedule(args.schedule).to_config()
    if args.size is not None:
        options["size"] = args.size
    return options


def run_train(args: argparse.Namespace) -> None:
    from catdiff.data.sources import open_training_data
    from catdiff.training.trainer import TrainConfig, Trainer

    options = train_options(args)
    size = options.pop("size", None)
    run_dir: Path = args.out
    if not args.resume and any(run_dir.glob("checkpoints/step-*")):
        raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue or choose another --out")
    source = open_training_data(args.data, size=size, autoencoder=args.autoencoder)
    options["model"].setdefault("in_channels", source.data.shape[1])
    options["model"].setdefault("out_channels", source.data.shape[1])
    config = TrainConfig.from_dict(options)
    trainer = Trainer(
        config,
        source.data,
        run_dir,
        data_info=source.info,
        mirrored=source.mirrored,
        labels=source.labels,
        autoencoder=source.autoencoder,
    )
    if args.resume and not trainer.resume():
        log.info("no checkpoint in %s; starting from scratch", run_dir)
    final = trainer.fit()
    if final is not None:
        log.info("done: %s", final)
