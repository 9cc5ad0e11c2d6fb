"""``catdiff ...`` sub-commands: thin argument parsing over the library.

User errors print one line and exit with code 2; nothing else prints a traceback for them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn, Sequence

from catdiff.diffusion.samplers import SAMPLERS
from catdiff.diffusion.schedule import SIGMA_SPACINGS
from catdiff.errors import UserError
from catdiff.rerank import DEFAULT_PROMPT, SCORERS

log = logging.getLogger("catdiff")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


# --- train -------------------------------------------------------------------------------------

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
    p.add_argument("--size", type=positive_int, help="train at this resolution (resize + center crop); default 32")
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
    p.add_argument(
        "data", type=Path, help="folder of images (searched recursively), or digits folder (MNIST IDX files)"
    )
    add_training_options(p)
    p.add_argument("--size", type=positive_int, help="train at this resolution (resize + center crop); default 32")
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
    options: dict[str, Any] = {}
    if args.config is not None:
        try:
            options = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read recipe {args.config}: {error}") from None
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


def training_data(
    args: argparse.Namespace, size: int | None
) -> tuple[Any, Any, Any, dict[str, Any], dict[str, Any] | None]:
    """(data, mirrored, labels, data_info, autoencoder record) from an image folder, a digits
    folder or a latent cache."""
    from catdiff.data.digits import Digits, is_digits_folder
    from catdiff.data.image_folder import ImageFolder
    from catdiff.data.latent_cache import LatentCache, check_compatible, is_latent_cache

    if is_digits_folder(args.data):
        digits = Digits.from_folder(args.data)
        info = {"path": str(args.data), "size": digits.images.shape[-1], "count": len(digits)}
        return digits.images, None, digits.labels, info, None
    if not is_latent_cache(args.data):
        dataset = ImageFolder(args.data, size or 32, preload=True)
        info = {"path": str(args.data), "size": dataset.size, "count": len(dataset)}
        return dataset.images, None, None, info, None
    cache = LatentCache.open(args.data)
    manifest = cache.manifest
    if args.autoencoder is not None:
        from catdiff.autoencoders import load_autoencoder

        wanted = load_autoencoder(args.autoencoder).descriptor()
        check_compatible(manifest, autoencoder=wanted, size=size or manifest["size"], root=args.data)
    elif size is not None and size != manifest["size"]:
        raise UserError(f"latent cache {args.data} was made at size {manifest['size']} px, not {size} px")
    info = {
        "latents": str(args.data),
        "source": manifest["source"],
        "size": manifest["size"],
        "count": manifest["count"],
    }
    record = {**manifest["autoencoder"], "source": manifest["autoencoder_source"]}
    return cache.latents, cache.flipped, cache.labels, info, record


def run_train(args: argparse.Namespace) -> None:
    from catdiff.training.trainer import TrainConfig, Trainer

    options = train_options(args)
    size = options.pop("size", None)
    run_dir: Path = args.out
    if not args.resume and any(run_dir.glob("checkpoints/step-*")):
        raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue or choose another --out")
    data, mirrored, labels, info, autoencoder = training_data(args, size)
    options["model"].setdefault("in_channels", data.shape[1])
    options["model"].setdefault("out_channels", data.shape[1])
    config = TrainConfig.from_dict(options)
    trainer = Trainer(config, data, run_dir, data_info=info, mirrored=mirrored, labels=labels, autoencoder=autoencoder)
    if args.resume and not trainer.resume():
        log.info("no checkpoint in %s; starting from scratch", run_dir)
    final = trainer.fit()
    if final is not None:
        log.info("done: %s", final)


# --- encode ------------------------------------------------------------------------------------


def add_encode_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "encode",
        help="encode an image folder into a latent cache",
        description="Encode a folder of images once into sharded latents for training (resumable).",
    )
    p.add_argument(
        "data", type=Path, help="folder of images (searched recursively), or digits folder (MNIST IDX files)"
    )
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
    p.set_defaults(run=run_encode)


def run_encode(args: argparse.Namespace) -> None:
    from catdiff.autoencoders import load_autoencoder
    from catdiff.data.digits import Digits, is_digits_folder
    from catdiff.data.image_folder import ImageFolder
    from catdiff.data.latent_cache import encode_folder

    autoencoder = load_autoencoder(args.autoencoder)
    digits = is_digits_folder(args.data)
    if digits:
        dataset = Digits.from_folder(args.data)  # at their own 32 px, never mirrored: a mirrored 7 is no 7
    elif args.size % autoencoder.downsampling_factor:
        raise UserError(f"--size must be a multiple of {autoencoder.downsampling_factor} for this autoencoder")
    else:
        dataset = ImageFolder(args.data, args.size)
    out = encode_folder(
        dataset,
        autoencoder.encode,
        args.out,
        autoencoder=autoencoder.descriptor(),
        source=str(args.autoencoder),
        flip=not (args.no_flip or digits),
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        progress=None,
    )
    print(f"encoded {len(dataset)} images into {out}")


# --- split -------------------------------------------------------------------------------------


def add_split_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "split",
        help="split an image folder into train/ and heldout/",
        description=(
            "Split an image folder into OUT/train and OUT/heldout (symbolic links, nothing copied),"
            " or a digits folder into two digits folders."
        ),
    )
    p.add_argument(
        "data", type=Path, help="folder of images (searched recursively), or digits folder (MNIST IDX files)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder to hold train/ and heldout/")
    p.add_argument("--heldout", type=positive_int, required=True, help="number of images to hold out")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.set_defaults(run=run_split)


def run_split(args: argparse.Namespace) -> None:
    from catdiff.data.digits import is_digits_folder, split_digits
    from catdiff.data.image_folder import split_folder

    split = split_digits if is_digits_folder(args.data) else split_folder
    train, heldout = split(args.data, args.out, heldout=args.heldout, seed=args.seed)
    print(f"wrote {train} and {heldout} ({args.heldout} held out)")


# --- export ------------------------------------------------------------------------------------


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="write a self-contained pipeline folder",
        description="Write a pipeline folder (pipeline.json, unet/, autoencoder/) that holds everything needed to sample.",
    )
    p.add_argument("model", type=Path, help="run folder (newest checkpoint), checkpoint or model folder")
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--fp16", action="store_true", help="store the denoiser's weights in float16 (half the size)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="the pipeline's default sampler")
    p.add_argument("--steps", type=positive_int, help="the pipeline's default number of steps")
    p.add_argument("--spacing", choices=SIGMA_SPACINGS, help="the pipeline's default spacing of noise levels")
    p.add_argument("--guidance", type=float, help="a class-conditional pipeline's default guidance scale")
    p.add_argument(
        "--reference-images",
        type=Path,
        help="training images: store what the eigen, typicality and neighbours scorers need",
    )
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    import torch

    from catdiff.io.checkpoints import read_config, resolve_model_folder
    from catdiff.pipeline import Pipeline

    folder = resolve_model_folder(args.model)
    pipeline = Pipeline.from_folder(folder, ema=not args.no_ema)
    if args.guidance is not None:
        pipeline.check_condition(torch.zeros(1, dtype=torch.long), args.guidance)
    chosen = {"sampler": args.sampler, "steps": args.steps, "spacing": args.spacing, "guidance": args.guidance}
    pipeline.sampling.update({key: value for key, value in chosen.items() if value is not None})
    pipeline.save(args.out, read_config(folder), dtype=torch.float16 if args.fp16 else torch.float32)
    if args.reference_images is not None:
        from catdiff.data.image_folder import ImageFolder, uint8_to_float
        from catdiff.rerank import EigenScorer, NeighbourScorer, TypicalityScorer

        images = ImageFolder(args.reference_images, NeighbourScorer.SIZE, preload=True).images
        references = uint8_to_float(images[:: max(1, len(images) // 2000)])
        for scorer in (TypicalityScorer, NeighbourScorer, EigenScorer):
            scorer.fit(references).save(args.out)
    print(f"wrote pipeline {args.out}")


# --- sample ------------------------------------------------------------------------------------


def add_sample_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sample",
        help="sample a trained model into a PNG grid",
        description="Sample images from a run, checkpoint or model folder.",
    )
    p.add_argument(
        "model", type=Path, help="pipeline folder, run folder (newest checkpoint), checkpoint or model folder"
    )
    add_sampling_options(p)
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="grid PNG to write")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.set_defaults(run=run_sample)


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """``--n --seed --steps --sampler --spacing --precision --class --guidance``; see :func:`sampling_options`."""
    default = " (default: the model's)"
    p.add_argument("--n", type=positive_int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    p.add_argument("--steps", type=positive_int, help="sampler steps" + default)
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the model's")
    p.add_argument("--spacing", choices=SIGMA_SPACINGS, help="noise levels of the steps" + default)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: faster on AVX-512/AMX CPUs")
    p.add_argument("--class", dest="label", type=int, help="class-conditional models: the class of every image")
    p.add_argument("--guidance", type=float, help="class-conditional models: classifier-free guidance scale" + default)


def condition_options(args: argparse.Namespace, pipeline: Any, n: int) -> dict[str, Any]:
    """``labels`` and ``guidance`` for ``Pipeline.sample``: ``--class`` for all ``n`` images or, on a
    class-conditional model without it, the classes in turn; the model's guidance by default."""
    if pipeline.num_classes is None:
        if args.label is not None or args.guidance is not None:
            raise UserError("--class and --guidance need a class-conditional model; this one is unconditional")
        return {}
    labels = [args.label] if args.label is not None else [i % pipeline.num_classes for i in range(n)]
    return {"labels": labels, "guidance": pipeline.guidance if args.guidance is None else args.guidance}


def sampling_options(args: argparse.Namespace, pipeline: Any, n: int) -> dict[str, Any]:
    """The options of :func:`add_sampling_options` for ``Pipeline.sample`` of ``n`` images, the
    pipeline's own sampler, steps and spacing where none was given."""
    options = {key: getattr(args, key) or pipeline.sampling[key] for key in ("steps", "sampler", "spacing")}
    if options["steps"] > pipeline.schedule.T:
        raise UserError(f"--steps must be at most {pipeline.schedule.T} for this model, got {options['steps']}")
    options.update(seed=args.seed, precision=args.precision, progress=None)
    return options | condition_options(args, pipeline, n)


def describe(options: dict[str, Any]) -> str:
    return f"{options['sampler']}, {options['steps']} steps on the {options['spacing']} grid, seed {options['seed']}"


def check_writable(path: Path) -> None:
    """Fail before any work if the output cannot be written (by trying: root ignores permission bits)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent}")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as error:
        raise UserError(f"output folder is not writable: {parent} ({error.strerror})") from None


def run_sample(args: argparse.Namespace) -> None:
    from catdiff.images import save_grid
    from catdiff.pipeline import Pipeline

    check_writable(args.out)
    pipeline = Pipeline.from_folder(args.model, ema=not args.no_ema)
    options = sampling_options(args, pipeline, args.n)
    save_grid(pipeline.sample(args.n, **options), args.out)
    print(f"wrote {args.n} images ({describe(options)}) to {args.out}")


# --- generate ----------------------------------------------------------------------------------


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate",
        help="make new images with the bundled cat model (or another pipeline)",
        description="Make a PNG grid of new images from a pipeline folder; by default the bundled cat model.",
    )
    p.add_argument("--model", default="cats", help="a bundled model's name or a pipeline folder (default: cats)")
    add_sampling_options(p)
    p.add_argument("--out", type=Path, default=Path("cats.png"), help="grid PNG to write")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser (pays off for large --n)")
    p.add_argument("--best-of", type=positive_int, help="make this many candidates in one batch and keep the best --n")
    p.add_argument("--scorer", choices=SCORERS, default="eigen", help="how --best-of ranks the candidates")
    p.add_argument("--clip-model", type=Path, help="local CLIP folder (transformers or open_clip) for --scorer clip")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="what the CLIP scorer compares images with")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    from catdiff.images import save_grid
    from catdiff.pipeline import Pipeline, pipeline_folder
    from catdiff.rerank import load_scorer

    check_writable(args.out)
    if args.best_of is not None and args.best_of < args.n:
        raise UserError(f"--best-of ({args.best_of}) must be at least --n ({args.n})")
    folder = pipeline_folder(args.model)
    pipeline = Pipeline.from_folder(folder)
    scorer = None
    if args.best_of is not None:
        scorer = load_scorer(args.scorer, pipeline=folder, clip_model=args.clip_model, prompt=args.prompt)
    if args.compile:
        pipeline.compile()
    options = sampling_options(args, pipeline, args.best_of or args.n)
    if scorer is None:
        images = pipeline.sample(args.n, **options)
    else:
        images, scores = pipeline.best_of(args.best_of, args.n, scorer, **options)
        print(f"{scorer.name} scores of the best {args.n} of {args.best_of}: " + " ".join(f"{v:.4f}" for v in scores))
    save_grid(images, args.out)
    print(f"wrote {args.n} images ({describe(options)}) to {args.out}")


# --- eval --------------------------------------------------------------------------------------


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval",
        help="compare generated samples with the training images",
        description=(
            "Fréchet distance (and KID) of samples to the training images, and memorisation:"
            " how close samples come to training images, against held-out images."
        ),
    )
    p.add_argument("samples", help="a folder of sample images, or a model to sample (bundled name, pipeline, run)")
    p.add_argument("--train", type=Path, required=True, help="folder of the training images")
    p.add_argument("--heldout", type=Path, help="folder of images held out of training (for memorisation)")
    p.add_argument("--n", type=positive_int, default=500, help="samples to generate from a model")
    p.add_argument("--steps", type=positive_int, help="sampler steps (default: the model's)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the model's")
    p.add_argument("--spacing", choices=SIGMA_SPACINGS, help="noise levels of the steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=positive_int, default=2000, help="training images to compare with, at most")
    p.add_argument("--inception", type=Path, help="Inception weights file for FID/KID proper (default: TAESD features)")
    p.add_argument("--json", type=Path, help="also write the report to this JSON file")
    p.set_defaults(run=run_eval)


def evaluation_samples(args: argparse.Namespace) -> Any:
    """The images to evaluate: read from a folder of images, or generated by a model."""
    from catdiff.data.image_folder import ImageFolder, uint8_to_float
    from catdiff.pipeline import BUNDLED_PIPELINES, Pipeline

    path = Path(args.samples)
    if (
        args.samples not in BUNDLED_PIPELINES
        and path.is_dir()
        and not any((path / name).exists() for name in ("pipeline.json", "config.json", "checkpoints"))
    ):
        return uint8_to_float(ImageFolder(path, 64, preload=True).images)
    pipeline = Pipeline.from_folder(pipeline_or_model(args.samples))
    options = {"steps": args.steps, "sampler": args.sampler, "spacing": args.spacing, "seed": args.seed}
    return pipeline.sample(args.n, progress=None, **options)


def pipeline_or_model(spec: str) -> Path:
    """A bundled model's folder, or the path as given."""
    from catdiff.pipeline import BUNDLED_PIPELINES, pipeline_folder

    return pipeline_folder(spec) if spec in BUNDLED_PIPELINES else Path(spec)


def run_eval(args: argparse.Namespace) -> None:
    from catdiff.data.image_folder import ImageFolder, uint8_to_float
    from catdiff.metrics import InceptionPool3, evaluate

    if args.json is not None:
        check_writable(args.json)
    features = InceptionPool3(args.inception) if args.inception is not None else None
    train = ImageFolder(args.train, 64, preload=True).images
    train = uint8_to_float(train[:: max(1, -(-len(train) // args.max_train))])
    heldout = uint8_to_float(ImageFolder(args.heldout, 64, preload=True).images) if args.heldout else None
    report = evaluate(evaluation_samples(args), train, heldout, features=features, kid=features is not None)
    report["features"] = "inception" if features is not None else "taesd"
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


# --- serve -------------------------------------------------------------------------------------


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the web app: a Generate button and a JSON API",
        description="Serve a page with a Generate button and the JSON API (POST /api/generate; docs at /docs).",
    )
    p.add_argument("--model", default="cats", help="a bundled model's name or a pipeline folder (default: cats)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=positive_int, default=32, help="images per shared batch, at most")
    p.add_argument("--max-queue", type=positive_int, default=64, help="images waiting, at most (then 503)")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from catdiff.serve import create_app

    app = create_app(args.model, max_batch_images=args.max_batch, max_pending=args.max_queue)
    print(f"serving {args.model} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="catdiff", description="Train, sample and serve small diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(commands)
    add_train_autoencoder_parser(commands)
    add_encode_parser(commands)
    add_sample_parser(commands)
    add_export_parser(commands)
    add_split_parser(commands)
    add_generate_parser(commands)
    add_eval_parser(commands)
    add_serve_parser(commands)
    from catdiff.cli.txt2img import add_txt2img_parser  # here, not above: it imports helpers from this module

    add_txt2img_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except UserError as error:
        print(f"catdiff: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("catdiff: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
