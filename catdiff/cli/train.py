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
from typing import TYPE_CHECKING, Any

from catdiff.cli.options import DATA_HELP, int_list, name_list, parse_duration, positive_int, probability
from catdiff.errors import UserError

if TYPE_CHECKING:
    from catdiff.training.init import InitModel

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
    "augment": "augment",
    "eval_every": "eval_every",
    "channels_last": "channels_last",
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
# A default run augments where it shows each image more often than this (docs/TRAINING.md), with
# EDM's probability for 64 px faces (Karras et al. 2022, FFHQ / AFHQv2).
AUGMENT_PASSES = 100
AUGMENT_P = 0.15


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
    p.add_argument(
        "--mixed-precision", choices=("auto", "no", "bf16", "fp16"), help="auto: the faster of fp32 and bf16 here"
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="the network in NHWC memory format (default: the recipe's; the default recipes measure both)",
    )
    p.add_argument("--ema-max-decay", type=float)
    p.add_argument("--checkpoint-every", type=positive_int)
    p.add_argument("--keep", type=positive_int, help="checkpoints to keep")
    p.add_argument("--preview-every", type=int, help="steps between preview grids (0: none)")
    p.add_argument("--log-every", type=positive_int)
    p.add_argument(
        "--log-with",
        type=name_list,
        default=[],
        metavar="TRACKERS",
        help="also send the curves to these trackers (accelerate's): tensorboard, wandb, mlflow, comma-separated;"
        " written into RUN/trackers, offline unless their environment variables say otherwise",
    )
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
        init=None,
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
        "--init",
        metavar="MODEL",
        help="fine-tune: start from this model (a bundled one: cats; a pipeline or run folder) of the same"
        " latent shape; its network, schedule and prediction replace the recipe's",
    )
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
    p.add_argument(
        "--augment",
        type=probability,
        metavar="P",
        help="non-leaking augmentation (EDM): flips, quarter turns and shifts, each with probability P,"
        " told to the network and absent at sampling (0: off)",
    )
    p.add_argument("--no-eval", action="store_true", default=False, help="image folders: skip the final report.json")
    p.add_argument(
        "--eval-every", type=positive_int, metavar="STEPS", help="image folders: also evaluate every STEPS steps"
    )
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
        options: dict[str, Any] = load_recipe(args.config)
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


def default_recipe(args: argparse.Namespace, kind: str, classes: list[str] | None, budget: float | None) -> str | None:
    """The recipe of a ``catdiff train`` without ``--recipe`` or ``--config``: for an image folder
    the one of its time ``budget`` (latents), the class-conditional one (class subfolders) or the
    pixel one (``--pixels``); none for digits folders and latent caches (``TrainConfig``'s defaults)."""
    from catdiff.recipes import DEFAULT_CLASSES, DEFAULT_PIXELS, budget_recipe

    if not args.default_recipes or kind != "images" or args.recipe is not None or args.config is not None:
        return None
    if args.pixels:
        return DEFAULT_PIXELS
    return DEFAULT_CLASSES if classes else budget_recipe(budget)


def resumed_train_config(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The training options of the checkpoint ``--resume`` continues from (empty if none)."""
    from catdiff.io.checkpoints import checkpoint_dirs, read_config

    found = checkpoint_dirs(run_dir) if args.resume else []
    return read_config(found[-1]).get("train", {}) if found else {}


def planned_budget(args: argparse.Namespace, run_dir: Path) -> float | None:
    """The training time of the run: ``--time``, else the resumed run's, else
    :data:`~catdiff.recipes.DEFAULT_BUDGET` unless ``--max-steps`` bounds it instead."""
    from catdiff.recipes import DEFAULT_BUDGET

    if args.time_budget is not None:
        return args.time_budget
    saved = resumed_train_config(args, run_dir)
    if saved:
        return saved.get("time_budget")
    return None if args.max_steps is not None else DEFAULT_BUDGET


def continue_run(args: argparse.Namespace, options: dict[str, Any], run_dir: Path) -> None:
    """``--resume`` keeps the run's time budget (and its step limit) unless ``--time`` or
    ``--max-steps`` is given again, the model it started from unless ``--init`` is, and its
    precision and memory format unless ``--mixed-precision`` is (so it continues bit-exactly)."""
    saved = resumed_train_config(args, run_dir)
    if args.init is None:
        args.init = saved.get("init")
    # The choices of the machine the run started on, so that it continues bit-exactly.
    if args.mixed_precision is None and "mixed_precision" in saved:
        options["mixed_precision"] = saved["mixed_precision"]
    if args.channels_last is None and "channels_last" in saved:
        options["channels_last"] = saved["channels_last"]
    if args.augment is None and "augment" in saved:
        options["augment"] = saved["augment"]
    if args.time_budget is None and args.max_steps is None and saved.get("time_budget") is not None:
        options["time_budget"], options["max_steps"] = saved["time_budget"], saved.get("max_steps")


def start_from(args: argparse.Namespace, options: dict[str, Any]) -> InitModel | None:
    """The model of ``--init`` with its options put in place of the recipe's, or None."""
    from catdiff.training.init import load_init, model_path

    if args.init is None:
        return None
    given = [
        flag for flag in (*MODEL_FLAGS, "model", "schedule", "prediction") if getattr(args, flag, None) is not None
    ]
    if given:
        raise UserError(
            f"--init takes the network, schedule and prediction of its model; drop --{given[0].replace('_', '-')}"
        )
    init = load_init(args.init)
    options.update(init.options(), init=model_path(args.init))
    return init


def choose_speed(
    args: argparse.Namespace, options: dict[str, Any], shape: tuple[int, ...], device: str, *, measure: bool
) -> float | None:
    """Settle how the run computes (:mod:`catdiff.training.speed`): a recipe's ``"auto"``
    precision or memory format is measured here, its bf16 becomes fp32 where bf16 is slow
    (unless ``--mixed-precision`` says so), and the choice is logged. Returns its images/s if
    measured (always, with ``measure``)."""
    import os

    import torch

    from catdiff.training.speed import candidates, choose_speed, describe, fast_bf16

    precision, layout = options.get("mixed_precision", "no"), options.get("channels_last", False)
    if args.mixed_precision is None and precision == "bf16" and not fast_bf16():
        precision = "no"
        log.info("this machine has no fast bf16: training in fp32 (--mixed-precision bf16 to insist)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # processes must agree: no timing, which could differ
        precision = ("bf16" if fast_bf16() else "no") if precision == "auto" else precision
        layout = False if layout == "auto" else layout
    settings = candidates(precision, layout)
    if options["model"].get("type") == "autoencoder_kl":  # timed as a denoiser is, so not timed
        settings, measure = settings[:1], False
    chosen, rates = choose_speed(
        options["model"], shape, options.get("batch_size", 1), settings, torch.device(device), measure_one=measure
    )
    options.update(chosen)
    if len(rates) > 1:
        measured = ", ".join(f"{describe(setting)} {rate:.1f}" for setting, rate in rates)
        log.info("computing in %s, the fastest here (images/s: %s)", describe(chosen), measured)
    return rates[0][1] if rates else None


def choose_augmentation(
    args: argparse.Namespace, options: dict[str, Any], count: int, rate: float | None, *, default: bool
) -> None:
    """Non-leaking augmentation (:mod:`catdiff.training.augment`) as asked, or by default where
    the run would show each image more than :data:`AUGMENT_PASSES` times (at ``rate`` images/s
    over its budget), where a small folder begins to be copied; the network gets its condition."""
    from catdiff.training.augment import AUGMENT_DIM

    undecided = args.augment is None and options.get("augment") is None and not args.resume
    if default and undecided and rate is not None:
        budget = options.get("time_budget")
        steps = options.get("max_steps") or 0
        shown = budget * rate if budget is not None else steps * options.get("batch_size", 1)
        passes = shown / max(1, count)
        if passes > AUGMENT_PASSES:
            options["augment"] = AUGMENT_P
            log.info(
                "about %.0f passes over %d images: augmenting (p = %g; --augment 0 for none)", passes, count, AUGMENT_P
            )
    if options.get("augment") and options["model"].get("type") == "unet":
        options["model"]["augment_dim"] = AUGMENT_DIM


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
    """``catdiff train``: the run folder is held by this process (the main one of several) throughout."""
    import contextlib
    import os

    from catdiff.io.run_lock import FolderLock

    main = int(os.environ.get("RANK", "0")) == 0
    with FolderLock(args.out) if main else contextlib.nullcontext():
        train_run(args)


def train_run(args: argparse.Namespace) -> None:
    import torch

    from catdiff.autoencoders import load_autoencoder
    from catdiff.data.holdout import MIN_FOLDER
    from catdiff.data.sources import (
        check_count,
        data_kind,
        folder_classes,
        heldout_files,
        latent_size,
        latent_training_data,
        open_training_data,
    )
    from catdiff.training.config import Recipe
    from catdiff.training.init import check_latents, init_size
    from catdiff.training.progress import duration
    from catdiff.training.trackers import check_trackers
    from catdiff.training.trainer import TrainConfig, Trainer
    from catdiff.validation import validate

    run_dir: Path = args.out
    check_trackers(args.log_with)
    if not args.resume and any(run_dir.glob("checkpoints/step-*")):
        raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue or choose another --out")
    kind = data_kind(args.data)
    classes = folder_classes(args.data) if kind == "images" and not args.unconditional else None
    budget = planned_budget(args, run_dir)
    recipe = default_recipe(args, kind, classes, budget)
    if recipe is not None:  # a resumed run keeps its own, whatever its budget has become
        recipe = resumed_train_config(args, run_dir).get("recipe") or recipe
    options = train_options(args, recipe)
    if recipe is not None or args.recipe is not None:
        options["recipe"] = recipe or args.recipe
    default_budget = recipe is not None and budget is not None and options.get("time_budget") is None
    if default_budget:
        options["time_budget"], options["max_steps"] = budget, None
    if recipe is not None and args.keep is None:
        options["keep_checkpoints"] = min(options.get("keep_checkpoints", DEFAULT_KEEP), DEFAULT_KEEP)
    continue_run(args, options, run_dir)
    init = start_from(args, options)
    validate(Recipe, options, "training options")  # before any encoding; TrainConfig checks the final ones
    size = options.pop("size", None)
    pixels = options.pop("pixels", False) or args.pixels  # a pixel-space recipe says so
    latents = args.default_recipes and kind == "images" and not pixels
    batch = options.get("batch_size", TrainConfig.batch_size) * options.get("grad_accum", TrainConfig.grad_accum)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if latents:
        autoencoder = load_autoencoder(args.autoencoder or "taesd")
        factor = autoencoder.downsampling_factor
        if init is not None:
            size = args.size or init_size(init, factor)
            check_latents(init, autoencoder.descriptor(), size, factor)
        size = size or latent_size(args.data)
        heldout = heldout_files(args.data, run_dir)
        source = latent_training_data(
            args.data,
            run_dir / LATENTS_DIR,
            size=size,
            autoencoder=args.autoencoder or "taesd",
            class_subfolders=not args.unconditional,
            batch=batch,
            device=device,
            heldout=heldout,
        )
    else:
        heldout = []
        source = open_training_data(
            args.data, size=size, autoencoder=args.autoencoder, class_subfolders=not args.unconditional
        )
    check_count(args.data, len(source.data), batch=batch)
    if init is not None and tuple(source.data.shape[1:]) != init.sample_shape:
        shape = "x".join(map(str, source.data.shape[1:]))
        raise UserError(
            f"--init {init.spec} makes {'x'.join(map(str, init.sample_shape))} samples; this data is {shape}"
        )
    if latents and not heldout:
        log.info("%s holds fewer than %d images: none held out, no memorisation check", args.data, MIN_FOLDER)
    if default_budget and not args.resume:
        log.info("training for %s (the default; --time or --max-steps to choose)", duration(options["time_budget"]))
    prepare_model(options, source)
    default = recipe is not None and latents  # a default run decides on augmentation by its speed
    rate = choose_speed(args, options, tuple(source.data.shape[1:]), device, measure=default and not args.resume)
    choose_augmentation(args, options, len(source.data), rate, default=default)
    config = TrainConfig.from_dict(options)
    trainer = Trainer(
        config,
        source.data,
        run_dir,
        data_info=source.info,
        mirrored=source.mirrored,
        labels=source.labels,
        autoencoder=source.autoencoder,
        init=None if init is None else init.weights,
        trackers=args.log_with,
    )
    if args.resume and not trainer.resume():
        log.info("no checkpoint in %s; starting from scratch", run_dir)
    evaluate = Evaluation(args, trainer, heldout, device) if latents and not args.no_eval else None
    trainer.evaluator = evaluate
    final = trainer.fit()
    if final is not None:
        log.info("done: %s; make images with `catdiff generate --model %s`", final, run_dir)
    if final is not None and evaluate is not None and trainer.accelerator.is_main_process:
        evaluate()


class Evaluation:
    """The evaluation of a run on an image folder: its newest checkpoint into ``report.json``
    (and a line of ``evaluations.jsonl``), printed in a few lines; returns the figures. The
    images it compares with are read on the first call and kept."""

    def __init__(self, args: argparse.Namespace, trainer: Any, heldout: list[str], device: str) -> None:
        self.args, self.trainer, self.heldout, self.device = args, trainer, heldout, device
        self.references: Any = None

    def __call__(self) -> dict[str, float]:
        from catdiff.training.report import References, eval_samples, evaluate_run, report_lines

        if self.references is None:
            self.references = References.of(self.args.data, self.heldout)
        config = self.trainer.config
        training = {
            "precision": {"no": "fp32"}.get(config.mixed_precision, config.mixed_precision),
            "steps": self.trainer.step,
            "elapsed_s": self.trainer.clock.spent,
            "init": config.init,
        }
        samples = self.args.eval_samples or eval_samples(len(self.heldout))
        report = evaluate_run(self.args.out, self.references, samples=samples, device=self.device, training=training)
        print("\n".join([f"evaluation at step {self.trainer.step}:", *report_lines(report)]), flush=True)
        return {k: v for k, v in report.items() if k in ("frechet", "memorised_fraction") and v is not None}
