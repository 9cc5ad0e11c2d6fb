"""Training speed, side by side in one process: catdiff's trainer against a plain diffusers loop.

    python bench/trainer_vs_diffusers.py --recipe folder-10m --side 8 --steps 40 --rounds 2

Both train the same U-Net shape (catdiff's ``UNet`` of the recipe and its twin ``UNet2DModel``:
same widths, blocks, attention and parameter count to 1%) on the same latents (random ones of the
recipe's shape, or ``--latents`` a cache of ``catdiff encode``), at the same batch size and
precision and memory format (``--channels-last``: NHWC on both sides). The diffusers side is the inner loop of diffusers' ``examples/unconditional_image_generation/
train_unconditional.py``: ``DDPMScheduler.add_noise``, ``UNet2DModel(...).sample``, MSE, accelerate's
backward, gradient clipping, AdamW, the LR scheduler and ``EMAModel.step``. catdiff's side is
``Trainer.fit`` with its EMA, seeded draws, logging and progress, less the final checkpoint. Each
side runs ``--rounds`` times, alternating; the best round counts. Prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from catdiff.models import build_model
from catdiff.recipes import load_recipe
from catdiff.training.report import cpu_name
from catdiff.training.trainer import TrainConfig, Trainer


def diffusers_twin(model: dict, side: int) -> torch.nn.Module:
    """``UNet2DModel`` with the blocks of catdiff's ``UNet`` config ``model``."""
    from diffusers import UNet2DModel

    levels = range(len(model["channel_mult"]))
    attention = set(model.get("attention_levels", ()))
    return UNet2DModel(
        sample_size=side,
        in_channels=model["in_channels"],
        out_channels=model["out_channels"],
        layers_per_block=model.get("num_res_blocks", 2),
        block_out_channels=tuple(model["base_channels"] * m for m in model["channel_mult"]),
        down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels)),
        attention_head_dim=model.get("attention_head_dim", 64),
        norm_num_groups=model.get("groups", 32),
        resnet_time_scale_shift="scale_shift",  # the time embedding scales and shifts, as in catdiff's ResBlock
    )


def diffusers_loop(
    data: torch.Tensor, model: dict, *, batch: int, steps: int, warmup: int, precision: str, channels_last: bool
) -> float:
    """Images/s of the diffusers training loop on ``data`` after ``warmup`` steps."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    accelerator = Accelerator(mixed_precision=precision, cpu=True)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    network = diffusers_twin(model, data.shape[-1]).to(memory_format=layout)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=10, num_training_steps=warmup + steps)
    network, optimizer, lr_scheduler = accelerator.prepare(network, optimizer, lr_scheduler)
    ema = EMAModel(network.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        clean = data[torch.randint(0, len(data), (batch,))].contiguous(memory_format=layout)
        noise = torch.randn_like(clean)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        noisy = noise_scheduler.add_noise(clean, noise, t)
        with accelerator.accumulate(network):
            prediction = network(noisy, t).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), noise)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        ema.step(network.parameters())
        loss.item()  # the loop logs the loss every step
    return steps * batch / (time.perf_counter() - start)


def catdiff_loop(
    data: torch.Tensor, recipe: dict, *, steps: int, warmup: int, precision: str, channels_last: bool
) -> float:
    """Images/s of ``Trainer.fit`` on ``data`` from step ``warmup`` to ``warmup + steps``."""
    options = {k: v for k, v in recipe.items() if k not in ("size", "pixels")}
    config = TrainConfig.from_dict(
        {
            **options,
            "max_steps": warmup,
            "time_budget": None,
            "mixed_precision": precision,  # the recipe may say "auto": the bench fixes both sides' settings
            "channels_last": channels_last,
            "checkpoint_every": 10**9,
            "preview_every": 0,
            "keep_checkpoints": 1,
        }  # fmt: skip
    )
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(config, data, Path(run), data_info={})
        trainer.fit()  # warm-up, and its checkpoint
        config.max_steps = warmup + steps
        saving = []
        save = trainer.save

        def timed_save() -> Path | None:
            begin = time.perf_counter()
            path = save()
            saving.append(time.perf_counter() - begin)
            return path

        trainer.save = timed_save  # type: ignore[method-assign]
        start = time.perf_counter()
        trainer.fit()
        return steps * config.batch_size / (time.perf_counter() - start - sum(saving))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="folder-10m", help="a shipped recipe (its network and batch)")
    parser.add_argument("--side", type=int, default=8, help="latent side: 8 for 64 px images (the default), 16 for 128")
    parser.add_argument("--latents", type=Path, help="a latent cache to train on (default: random latents)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format on both sides")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    side = args.side
    if args.latents is not None:
        from catdiff.data.latent_cache import LatentCache

        data = LatentCache.open(args.latents).latents
    else:
        data = torch.randn(4096, 4, side, side, generator=torch.Generator().manual_seed(0))
    model = {**recipe["model"], "in_channels": 4, "out_channels": 4}
    recipe = {**recipe, "model": model}
    batch = recipe.get("batch_size", TrainConfig.batch_size)
    ours_params = sum(p.numel() for p in build_model(model).parameters())
    theirs_params = sum(p.numel() for p in diffusers_twin(model, side).parameters())
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; {args.recipe}: latents 4x{side}x{side},"
          f" batch {batch}, {args.precision}, {'channels-last' if args.channels_last else 'NCHW'}; parameters catdiff {ours_params / 1e6:.2f}M,"
          f" diffusers {theirs_params / 1e6:.2f}M")  # fmt: skip
    rates: dict[str, list[float]] = {"catdiff": [], "diffusers": []}
    for round_ in range(args.rounds):
        common = {
            "steps": args.steps,
            "warmup": args.warmup,
            "precision": args.precision,
            "channels_last": args.channels_last,
        }
        rates["catdiff"].append(catdiff_loop(data, recipe, **common))
        rates["diffusers"].append(diffusers_loop(data, model, batch=batch, **common))
        print(
            f"round {round_ + 1}: catdiff {rates['catdiff'][-1]:.1f} img/s, diffusers {rates['diffusers'][-1]:.1f} img/s"
        )
    ours, theirs = max(rates["catdiff"]), max(rates["diffusers"])
    print(
        f"| catdiff img/s | diffusers img/s | ratio |\n|---|---|---|\n| {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |"
    )


if __name__ == "__main__":
    main()
