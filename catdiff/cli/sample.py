"""``catdiff sample``, ``catdiff generate`` and ``catdiff export``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from catdiff.cli.options import (
    MAX_SEED,
    SEED_HELP,
    add_device_option,
    add_sampler_options,
    bounded,
    check_image_output,
    make_writable_folder,
    positive_int,
    seed,
)
from catdiff.errors import UserError
from catdiff.rerank import DEFAULT_PROMPT, DEFAULT_SCORER, SCORERS


def add_parsers(commands: argparse._SubParsersAction) -> None:
    add_sample_parser(commands)
    add_export_parser(commands)
    add_generate_parser(commands)


# --- options shared by sample and generate --------------------------------------------------------


MAX_BEST_OF = 4096
GUIDANCE_HELP = (
    "guidance scale, 1 for none: classifier-free for class-conditional models, autoguidance for models"
    " with a guide network"
)


def add_sampling_options(p: argparse.ArgumentParser, grid: str) -> None:
    """``--n --seed --steps --sampler --spacing --precision --class --guidance --device``, and the
    output: a grid ``--out`` (default ``grid``) or one PNG per seed in ``--out-dir``."""
    p.add_argument("--n", type=positive_int, default=16, help="number of images")
    p.add_argument(
        "--seed", type=seed, default=0, help=f"the same seed gives the same images; image i has seed + i ({SEED_HELP})"
    )
    add_sampler_options(p)
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="of the denoiser and decoder; auto: bf16 where the CPU or GPU has bf16 instructions, else fp32",
    )
    p.add_argument(
        "--class",
        dest="label",
        metavar="CLASS",
        help="class-conditional models: the class of every image, by name (a trained folder's subfolder) or number",
    )
    p.add_argument("--guidance", type=float, help=f"{GUIDANCE_HELP} (default: the model's)")
    add_device_option(p, "sample on")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", type=Path, default=Path(grid), help=f"grid PNG to write (default {grid})")
    out.add_argument("--out-dir", type=Path, help="write one PNG per image instead, named by its seed: DIR/000042.png")


def class_names(folder: Path) -> list[str] | None:
    """The class names recorded with a model (a pipeline folder's ``classes``, or those of the
    data of a run, checkpoint or model folder), or None when it has none."""
    from catdiff.io.checkpoints import read_config, resolve_model_folder
    from catdiff.io.diffusers_pipeline import is_diffusers_folder
    from catdiff.io.json_files import read_json
    from catdiff.pipeline import PIPELINE_FILE

    if (folder / PIPELINE_FILE).is_file():
        return read_json(folder / PIPELINE_FILE, what="pipeline folder").get("classes")
    if is_diffusers_folder(folder):
        return None
    return read_config(resolve_model_folder(folder)).get("data", {}).get("classes")


def class_label(text: str, classes: Sequence[str] | None) -> int:
    """The label of ``--class``: a class name of the model, else a number."""
    if classes and text in classes:
        return list(classes).index(text)
    try:
        return int(text)
    except ValueError:
        pass
    if classes:
        raise UserError(f"unknown class {text!r}; this model's classes are {', '.join(classes)}")
    raise UserError(f"--class must be a number for this model (its classes have no names), got {text!r}")


def condition_options(
    args: argparse.Namespace, pipeline: Any, n: int, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """The ``condition`` of ``Pipeline.sample``: ``--class`` (a name of ``classes`` or a number)
    for all ``n`` images or, on a class-conditional model without it, the classes in turn; the
    model's guidance by default."""
    if pipeline.num_classes is None:
        if args.label is not None:
            raise UserError("--class needs a class-conditional model; this one is unconditional")
        return {} if args.guidance is None else {"condition": pipeline.autoguidance(args.guidance)}
    if args.label is not None:
        labels = [class_label(args.label, classes)] * n
    else:
        labels = [i % pipeline.num_classes for i in range(n)]
    return {"condition": pipeline.class_condition(labels, args.guidance)}


def sampling_options(
    args: argparse.Namespace, pipeline: Any, n: int, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """The options of :func:`add_sampling_options` for ``Pipeline.sample`` of ``n`` images, the
    pipeline's own sampler, steps and spacing where none was given; ``classes`` name the labels."""
    options = {key: getattr(args, key) or pipeline.sampling[key] for key in ("steps", "sampler", "spacing")}
    if options["steps"] > pipeline.schedule.T:
        raise UserError(f"--steps must be at most {pipeline.schedule.T} for this model, got {options['steps']}")
    if args.seed + n - 1 > MAX_SEED:
        raise UserError(f"--seed {args.seed} with {n} images passes the largest seed, {MAX_SEED}")
    if args.seed + n - 1 > MAX_SEED:
        raise UserError(f"--seed {args.seed} with {n} images passes the largest seed, {MAX_SEED}")
    options.update(seed=args.seed, precision=args.precision, progress=None)
    return options | condition_options(args, pipeline, n, classes)


def prepare_output(args: argparse.Namespace) -> None:
    """Fail before sampling if the output cannot be written; create ``--out-dir``."""
    if args.out_dir is None:
        check_image_output(args.out)
    else:
        make_writable_folder(args.out_dir)


def write_output(args: argparse.Namespace, images: Tensor, seeds: Sequence[int], options: dict[str, Any]) -> None:
    """A grid at ``--out``, or ``--out-dir/<seed>.png`` per image; then say what was written."""
    from catdiff.images import save_grid, save_image, to_pil

    if args.out_dir is None:
        save_grid(images, args.out)
    else:
        for image_seed, image in zip(seeds, to_pil(images), strict=True):
            save_image(image, args.out_dir / f"{image_seed:06d}.png")
    how = f"{options['sampler']}, {options['steps']} steps on the {options['spacing']} grid, seed {options['seed']}"
    print(f"wrote {len(images)} images ({how}) to {args.out_dir or args.out}")


# --- sample --------------------------------------------------------------------------------------


def add_sample_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sample",
        help="sample a trained model into a PNG grid",
        description="Sample images from a run, checkpoint or model folder.",
    )
    p.add_argument(
        "model", type=Path, help="pipeline folder, run folder (newest checkpoint), checkpoint or model folder"
    )
    add_sampling_options(p, "samples.png")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.set_defaults(run=run_sample)


def run_sample(args: argparse.Namespace) -> None:
    from catdiff.pipeline import Pipeline

    prepare_output(args)
    pipeline = Pipeline.from_folder(args.model, ema=not args.no_ema, device=args.device)
    options = sampling_options(args, pipeline, args.n, class_names(args.model))
    write_output(args, pipeline.sample(args.n, **options), range(args.seed, args.seed + args.n), options)


# --- generate ------------------------------------------------------------------------------------


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate",
        help="make new images with the bundled cat model (or another model)",
        description=(
            "Make a PNG grid of new images from a pipeline folder or a run folder of `catdiff train`"
            " (its newest checkpoint, EMA weights); by default the bundled cat model."
        ),
    )
    p.add_argument(
        "--model",
        default="cats",
        help="a bundled model's name (cats, digits), a pipeline folder or a run folder (default: cats)",
    )
    add_sampling_options(p, "cats.png")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser (pays off for large --n)")
    p.add_argument(
        "--best-of",
        type=bounded(int, 1, MAX_BEST_OF),
        metavar="N",
        help=f"make N candidates (at most {MAX_BEST_OF}, made and scored 64 at a time, so memory stays bounded)"
        " and keep the best --n",
    )
    p.add_argument("--scorer", choices=SCORERS, default=DEFAULT_SCORER, help="how --best-of ranks the candidates")
    p.add_argument("--clip-model", type=Path, help="local CLIP folder (transformers or open_clip) for --scorer clip")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="what the CLIP scorer compares images with")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    from catdiff.pipeline import PIPELINE_FILE, Pipeline, pipeline_folder
    from catdiff.rerank import STORED_SCORERS, load_scorer

    prepare_output(args)
    if args.best_of is not None and args.best_of < args.n:
        raise UserError(f"--best-of ({args.best_of}) must be at least --n ({args.n})")
    folder = pipeline_folder(args.model)
    if args.best_of is not None and args.scorer in STORED_SCORERS and not (folder / PIPELINE_FILE).is_file():
        raise UserError(
            f"{folder} is not a pipeline folder, so it has no statistics for --scorer {args.scorer}: export it"
            f" with `catdiff export {folder} --out DIR --reference-images TRAINING_IMAGES`, or use --scorer clip"
        )
    pipeline = Pipeline.from_folder(folder, device=args.device)
    scorer = None
    if args.best_of is not None:
        scorer = load_scorer(args.scorer, pipeline=folder, clip_model=args.clip_model, prompt=args.prompt)
    if args.compile:
        pipeline.compile()
    options = sampling_options(args, pipeline, args.best_of or args.n, class_names(folder))
    if scorer is None:
        images, seeds = pipeline.sample(args.n, **options), range(args.seed, args.seed + args.n)
    else:
        images, scores, indices = pipeline.best_of(args.best_of, args.n, scorer, **options)
        seeds = [args.seed + int(i) for i in indices]
        print(f"{scorer.name} scores of the best {args.n} of {args.best_of}: " + " ".join(f"{v:.4f}" for v in scores))
    write_output(args, images, seeds, options)


# --- export --------------------------------------------------------------------------------------


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="write a self-contained pipeline folder",
        description="Write a pipeline folder (pipeline.json, unet/, autoencoder/, and guide/ where the model has one)"
        " that holds everything needed to sample.",
    )
    p.add_argument(
        "model", help="run folder (newest checkpoint), checkpoint, model or pipeline folder, or a bundled model"
    )
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument(
        "--format",
        choices=("catdiff", "diffusers"),
        default="catdiff",
        help="catdiff: a pipeline folder; diffusers: unet/, scheduler/ and vae/ for diffusers' classes"
        " (model_index.json for a pixel model: a DDPMPipeline); diffusers has no autoguidance",
    )
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--fp16", action="store_true", help="store the denoiser's weights in float16 (half the size)")
    add_sampler_options(p, "stored as the pipeline's default")
    p.add_argument("--guidance", type=float, help=f"the pipeline's default {GUIDANCE_HELP}")
    p.add_argument("--guide", type=Path, help="autoguidance: the guide network (a less trained or smaller model)")
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="autoguidance only at noise levels (VE sigma) in [LOW, HIGH]",
    )
    p.add_argument(
        "--output-size",
        type=positive_int,
        metavar="PX",
        help="images of this side: the decoded images are upsampled to it (bicubic), as training upsamples"
        " pictures smaller than its --size",
    )
    p.add_argument(
        "--reference-images",
        type=Path,
        help="training images: store what the eigen, typicality and neighbours scorers need",
    )
    p.add_argument(
        "--realism-scorer",
        type=positive_int,
        metavar="N",
        help="with --reference-images: train the realism scorer on N training images against N samples",
    )
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    import shutil

    import torch

    from catdiff.io.checkpoints import replace_folder
    from catdiff.io.diffusers_pipeline import left_out_of_diffusers, save_diffusers_pipeline
    from catdiff.io.json_files import read_json, write_json
    from catdiff.pipeline import (
        PIPELINE_FILE,
        PIPELINE_FORMAT,
        Pipeline,
        load_network,
        network_folder,
        pipeline_folder,
        read_model,
    )
    from catdiff.realism import fit_realism_scorer
    from catdiff.rerank import STORED_FILES, fit_reference_scorers

    if args.realism_scorer is not None and args.reference_images is None:
        raise UserError("--realism-scorer needs --reference-images (the training images it learns from)")
    catdiff_only = {
        "--fp16": args.fp16,
        "--reference-images": args.reference_images,
        "--guide": args.guide,
        "--output-size": args.output_size,
    }
    given = [flag for flag, value in catdiff_only.items() if value]
    if args.format == "diffusers" and given:
        raise UserError(f"{given[0]} is for catdiff pipeline folders, not --format diffusers")
    if args.out.exists() and not (args.out / PIPELINE_FILE).is_file() and any(args.out.iterdir()):
        raise UserError(f"--out {args.out} holds other files; give a new folder or a pipeline folder to replace")
    make_writable_folder(args.out.parent if str(args.out.parent) else Path("."))
    source = pipeline_folder(args.model)
    _, config, _ = read_model(source)
    pipeline = Pipeline.from_folder(source, ema=not args.no_ema)
    if args.guide is not None:
        pipeline.guide = load_network(network_folder(pipeline_folder(args.guide)), ema=not args.no_ema)[0]
    if args.guidance_interval is not None:
        pipeline.sampling["guidance_interval"] = list(args.guidance_interval)
    if args.output_size is not None:
        pipeline.output_size = args.output_size
    if args.guidance is not None and pipeline.num_classes is None:  # refused unless it has a guide
        pipeline.autoguidance(args.guidance)
    elif args.guidance is not None:
        pipeline.class_condition([0], args.guidance)  # refuses bad guidance
    chosen = {"sampler": args.sampler, "steps": args.steps, "spacing": args.spacing, "guidance": args.guidance}
    pipeline.sampling.update({key: value for key, value in chosen.items() if value is not None})

    def fill(out: Path) -> None:  # a new folder, which replaces --out once whole
        pipeline.save(out, config, dtype=torch.float16 if args.fp16 else torch.float32)
        classes = config.get("classes") or config.get("data", {}).get("classes")
        if classes:  # the names of the labels, for `generate --class NAME`
            description = read_json(out / PIPELINE_FILE, format=PIPELINE_FORMAT, what="pipeline folder")
            write_json(out / PIPELINE_FILE, {**description, "classes": classes})
        if args.reference_images is not None:
            fit_reference_scorers(args.reference_images, out)
        elif (source / PIPELINE_FILE).is_file():
            for name in STORED_FILES:  # a pipeline's scorer statistics come along
                if (source / name).is_file():
                    shutil.copyfile(source / name, out / name)
        if args.realism_scorer is not None:
            scorer, fit = fit_realism_scorer(pipeline, args.reference_images, samples=args.realism_scorer)
            scorer.save(out)
            print(
                f"realism scorer: {fit.heldout_accuracy:.3f} accuracy on {fit.heldout} held-out images"
                f" (trained on {fit.trained_on}; 0.5 is chance)"
            )

    if args.format == "diffusers":
        replace_folder(args.out, lambda out: save_diffusers_pipeline(pipeline, out, config["diffusion"]))
        print(
            f"wrote diffusers folder {args.out} (unet/, scheduler/{'' if pipeline.autoencoder is None else ', vae/'})"
        )
        for part in left_out_of_diffusers(pipeline):
            print(f"left out: {part}")
        return
    replace_folder(args.out, fill)
    print(f"wrote pipeline {args.out}")
