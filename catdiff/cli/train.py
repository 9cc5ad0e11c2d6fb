"""``catdiff train`` and ``catdiff train-autoencoder``.

``catdiff train FOLDER --out RUN`` on a folder of images trains latent diffusion: the images are
encoded once with TAESD into ``RUN/latents`` (resumable, reused by ``--resume`` and re-runs),
then a denoiser learns them with the recipe of the bundled cats model, or the class-conditional
recipe for a folder of class subfolders. ``--pixels`` trains in pixel space instead; digits
folders and latent caches train as they are. ``--recipe NAME`` / ``--config FILE`` choose the
options, flags override them; ``--time 30m`` bounds the training time. In latents, 5% of the
images are held out (``RUN/heldout.json``) and the final model is evaluated (``RUN/report.json``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from catdiff.cli.options import DATA_HELP, int_list, parse_duration, positive_int
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
SIZE_HELP = (
    "train at this resolution in pixels (resize + centre crop): default 128 for latents (a multiple of 8),"
    " 32 with --pixels, or the recipe's"
)
LATENTS_DIR = "latents"  # the latent cache of an image folder, inside the run folder
DEFAULT_KEEP = 3  # checkpoints a default run keeps (the cats recipe kept 30, for its evaluation curve)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    add_train_parser(commands)
    add_train_autoencoder_parser(commands)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every training sub-command."""
    from catdiff.recipes import RECIPES

    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, previews, log.jsonl")
    recipe = p.add_mutually_exclusive_group()
    recipe.add_argument(
        "--recipe", metavar="NAME", help=f"a recipe shipped with catdiff: {', '.join(RECIPES)}; flags override it"
    )
    recipe.add_argument(
        "--config", type=Path, metavar="FILE", help="JSON recipe file of training options; flags override it"
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument(
        "--time",
        dest="time_budget",
        type=parse_duration,
        metavar="DURATION",
        help="train for this long, e.g. 90s, 30m, 2h, 1h30m (training time, in total over --resume;"
        " no step limit unless --max-steps)",
    )
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
    p.set_defaults(
        run=run_train,
        autoencoder=None,
        model=None,
        schedule=None,
        pixels=False,
        unconditional=False,
        default_recipes=False,
        no_eval=True,
        eval_samples=None,
        **{flag: None for flag in MODEL_FLAGS},
    )


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a denoiser on a folder of images",
        description="Train a diffusion model on a folder of images or a latent cache.",
    )
    p.add_argument(
        "data",
        type=Path,
        help="folder of images (searched recursively; class subfolders train a class-conditional model),"
        " digits folder (MNIST IDX files), or latent cache (`catdiff encode`)",
    )
    add_training_options(p)
    p.add_argument("--pixels", action="store_true", help="image folders: train in pixel space, not in TAESD latents")
    p.add_argument(
        "--unconditional",
        action="store_true",
        help="image folders: ignore class subfolders and train one unconditional model",
    )
    p.add_argument(
        "--autoencoder",
        help="image folders: encode with this autoencoder (default taesd); a latent cache: refuse it unless"
        " made with this autoencoder",
    )
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
    p.add_argument("--no-eval", action="store_true", default=False, help="image folders: skip the final report.json")
    p.add_argument(
        "--eval-samples", type=positive_int, help="samples of the final evaluation (default: held-out images, 100-500)"
    )
    p.set_defaults(default_recipes=True)


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


def train_options(args: argparse.Namespace, default_recipe: str | None = None) -> dict[str, Any]:
    """The recipe (``--recipe``, ``--config``, else ``default_recipe``, else none), then flags on top.
    ``--time`` without ``--max-steps`` lifts the recipe's step limit."""
    from catdiff.recipes import load_recipe

    if args.config is not None:
        options: dict[str, Any] = read_json(args.config, what="recipe")
    elif args.recipe is not None or default_recipe is not None:
        options = load_recipe(args.recipe or default_recipe)
    else:
        options = {}
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
    if args.time_budget is not None:
        options["time_budget"] = args.time_budget
        if args.max_steps is None:
            options["max_steps"] = None  # the time decides
    return options


def default_recipe(args: argparse.Namespace, kind: str, classes: list[str] | None) -> str | None:
    """The recipe of a ``catdiff train`` without ``--recipe`` or ``--config``: for an image folder
    the bundled cats model's (latents), the class-conditional one (class subfolders) or the pixel
    one (``--pixels``); none for digits folders and latent caches (``TrainConfig``'s defaults)."""
    from catdiff.recipes import DEFAULT_CLASSES, DEFAULT_LATENT, DEFAULT_PIXELS

    if not args.default_recipes or kind != "images" or args.recipe is not None or args.config is not None:
        return None
    if args.pixels:
        return DEFAULT_PIXELS
    return DEFAULT_CLASSES if classes else DEFAULT_LATENT


def continue_budget(args: argparse.Namespace, options: dict[str, Any], run_dir: Path) -> None:
    """``--resume`` of a run with a time budget keeps that budget (and its step limit) unless
    ``--time`` or ``--max-steps`` is given again."""
    from catdiff.io.checkpoints import checkpoint_dirs, read_config

    if not args.resume or args.time_budget is not None or args.max_steps is not None:
        return
    found = checkpoint_dirs(run_dir)
    saved = read_config(found[-1]).get("train", {}) if found else {}
    if saved.get("time_budget") is not None:
        options["time_budget"], options["max_steps"] = saved["time_budget"], saved.get("max_steps")


def fast_bf16() -> bool:
    """Whether bf16 autocast pays off here: a GPU with bf16, or a CPU with AVX-512 bf16 or AMX
    instructions (elsewhere bf16 convolutions run 3-25x slower than fp32; docs/TRAINING.md)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with care
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_precision(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """A recipe's bf16 autocast becomes fp32 where bf16 is slow, unless ``--mixed-precision`` says."""
    if args.mixed_precision is None and options.get("mixed_precision") == "bf16" and not fast_bf16():
        options["mixed_precision"] = "no"
        log.info("this machine has no fast bf16: training in fp32 (--mixed-precision bf16 to insist)")


def prepare_model(options: dict[str, Any], source: Any) -> None:
    """Fill the model config from the data: channels and, for a class-conditional model, the
    classes and latent side. Class names are kept in the run's record only for such a model."""
    model = options["model"]
    model.setdefault("in_channels", source.data.shape[1])
    model.setdefault("out_channels", source.data.shape[1])
    classes = source.info.get("classes")
    if model.get("type") == "class_unet":
        if source.labels is not None:
            model.setdefault("num_classes", len(classes) if classes else int(source.labels.max()) + 1)
        model.setdefault("sample_size", source.data.shape[-1])
        if classes:
            log.info("class-conditional on %d classes: %s", len(classes), ", ".join(classes))
    elif classes:
        source.info.pop("classes")
        log.info(
            "this recipe's model is not class-conditional: one unconditional model of all %d classes", len(classes)
        )


def run_train(args: argparse.Namespace) -> None:
    import torch

    from catdiff.data.holdout import MIN_FOLDER
    from catdiff.data.sources import (
        LATENT_SIZE,
        check_count,
        data_kind,
        folder_classes,
        heldout_files,
        latent_training_data,
        open_training_data,
    )
    from catdiff.training.trainer import TrainConfig, Trainer

    run_dir: Path = args.out
    if not args.resume and any(run_dir.glob("checkpoints/step-*")):
        raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue or choose another --out")
    kind = data_kind(args.data)
    classes = folder_classes(args.data) if kind == "images" and not args.unconditional else None
    recipe = default_recipe(args, kind, classes)
    options = train_options(args, recipe)
    if recipe is not None and args.keep is None:
        options["keep_checkpoints"] = min(options.get("keep_checkpoints", DEFAULT_KEEP), DEFAULT_KEEP)
    continue_budget(args, options, run_dir)
    size = options.pop("size", None)
    pixels = options.pop("pixels", False) or args.pixels  # a pixel-space recipe says so
    latents = args.default_recipes and kind == "images" and not pixels
    batch = options.get("batch_size", TrainConfig.batch_size) * options.get("grad_accum", TrainConfig.grad_accum)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    heldout = heldout_files(args.data, run_dir) if latents else []
    if latents:
        cache = run_dir / LATENTS_DIR
        source = latent_training_data(
            args.data,
            cache,
            size=size or LATENT_SIZE,
            autoencoder=args.autoencoder or "taesd",
            class_subfolders=not args.unconditional,
            batch=batch,
            device=device,
            heldout=heldout,
        )
    else:
        source = open_training_data(
            args.data, size=size, autoencoder=args.autoencoder, class_subfolders=not args.unconditional
        )
    check_count(args.data, len(source.data), batch=batch)
    if latents and not heldout:
        log.info("%s holds fewer than %d images: none held out, no memorisation check", args.data, MIN_FOLDER)
    prepare_model(options, source)
    choose_precision(args, options)
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
        log.info("done: %s; make images with `catdiff generate --model %s`", final, run_dir)
    if final is not None and latents and not args.no_eval and trainer.accelerator.is_main_process:
        from catdiff.training.report import evaluate_run, report_lines

        precision = {"no": "fp32"}.get(config.mixed_precision, config.mixed_precision)
        training = {"precision": precision, "steps": trainer.step, "elapsed_s": trainer.clock.spent}
        report = evaluate_run(run_dir, args.data, heldout, samples=args.eval_samples, device=device, training=training)
        print("\n".join(report_lines(report)))
