"""``catdiff txt2img``: Stable Diffusion 1.x text-to-image and image-to-image from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import Tensor

from catdiff.cli.options import SEED_HELP, add_device_option, bounded, check_image_output, seed
from catdiff.diffusion.samplers import SAMPLERS
from catdiff.diffusion.schedule import SIGMA_SPACINGS
from catdiff.errors import UserError
from catdiff.pipeline import MAX_GUIDANCE
from catdiff.precision import PRECISIONS, resolve_precision
from catdiff.sd.pipeline import StableDiffusion


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "txt2img",
        help="Stable Diffusion 1.x: an image from a prompt (or from an image, with --init-image)",
        description=(
            "Text-to-image (and image-to-image) with an SD-1.x checkpoint: a CompVis .safetensors/.ckpt "
            "single file (v1-5-pruned-emaonly and fine-tunes) or a diffusers folder. Nothing is downloaded."
        ),
    )
    p.add_argument("checkpoint", type=Path, help="SD-1.x .safetensors/.ckpt file or diffusers folder")
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--out", type=Path, default=Path("txt2img.png"), help="PNG to write")
    p.add_argument("--negative", default="", help="negative prompt: what to steer away from")
    p.add_argument(
        "--guidance", type=bounded(float, 0, MAX_GUIDANCE), default=7.5, help="classifier-free guidance scale (1: none)"
    )
    p.add_argument("--steps", type=bounded(int, 1, 1000), default=30, help="sampler steps")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpmpp_2m")
    p.add_argument("--spacing", choices=SIGMA_SPACINGS, default="trailing", help="the sigma grid")
    p.add_argument("--seed", type=seed, default=0, help=f"the same seed gives the same image ({SEED_HELP})")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's, 512)")
    p.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's, 512)")
    p.add_argument("--init-image", type=Path, help="image-to-image: start from this picture")
    p.add_argument(
        "--strength",
        type=bounded(float, 0, 1, above_low=True),
        default=0.75,
        help="image-to-image: how much to change, (0, 1]",
    )
    p.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="weights' dtype (bf16 and fp16 halve the memory); auto: bf16 where the CPU or GPU has bf16 instructions",
    )
    add_device_option(p)
    p.set_defaults(run=run_txt2img)


def _read_init_image(path: Path, size: tuple[int, int] | None) -> Tensor:
    """The picture as ``[1, 3, H, W]`` in [-1, 1], resized to ``size`` or cut down to multiples of 8."""
    from PIL import Image, UnidentifiedImageError

    from catdiff.images import from_pil

    try:
        image = Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"cannot read --init-image {path}: {error}") from None
    width, height = (size[1], size[0]) if size else (image.width // 8 * 8, image.height // 8 * 8)
    if (width, height) != image.size:
        image = image.resize((max(width, 8), max(height, 8)), Image.Resampling.LANCZOS)
    return from_pil(image)[None]


def run_txt2img(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from catdiff.images import save_image, to_pil

    check_image_output(args.out)
    if args.init_image is not None and not args.init_image.is_file():
        raise UserError(f"no such file: --init-image {args.init_image}")
    sd = StableDiffusion.from_checkpoint(
        args.checkpoint, dtype=PRECISIONS[resolve_precision(args.precision)], device=args.device
    )
    size = (args.height or sd.default_size, args.width or sd.default_size)
    img2img = args.init_image is not None
    init = _read_init_image(args.init_image, size if args.width or args.height else None) if img2img else None
    options = {"negative_prompt": args.negative, "guidance": args.guidance, "steps": args.steps, "seed": args.seed}
    options.update(sampler=args.sampler, spacing=args.spacing)
    steps = int(args.steps * args.strength) if img2img else args.steps
    with tqdm(total=steps, desc="sampling", disable=not sys.stderr.isatty()) as bar:
        options.update(callback=lambda info: bar.update())
        if init is not None:
            image = sd.image_to_image(init, args.prompt, strength=args.strength, **options)
        else:
            image = sd.text_to_image(args.prompt, size=size, **options)
    save_image(to_pil(image)[0], args.out)
    print(f"wrote {args.out} ({args.sampler}, {args.steps} steps, guidance {args.guidance}, seed {args.seed})")
