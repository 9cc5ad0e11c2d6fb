"""The training loop (on accelerate): EMA, atomic checkpoints, exact resume, previews, logs.

Every random draw of step ``k`` (batch order, flips, timesteps, noise, label and network
dropout) comes from generators seeded by ``(seed, k)``, and the whole global batch is drawn
before each process takes its share. So a resumed run continues bit-exactly, and N processes
with batch B each, accumulating G rounds, see the same data and noise as one process with
batch N*B*G. A run with a time budget (:mod:`catdiff.training.budget`) also stops, and with a
cosine schedule sets its learning rate, by measured time: it is not reproducible step for step.
SIGINT / SIGTERM stop a run cleanly (:mod:`catdiff.training.signals`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from catdiff.autoencoders import Autoencoder, load_autoencoder
from catdiff.data.image_folder import random_hflip, uint8_to_float
from catdiff.diffusion.conditioning import drop_labels
from catdiff.diffusion.schedule import NoiseSchedule
from catdiff.errors import UserError
from catdiff.images import save_grid
from catdiff.io.atomic import remove_stale
from catdiff.io.checkpoints import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS_DIR,
    checkpoint_dirs,
    read_config,
    read_training_state,
    read_weights,
    replace_folder,
    save_checkpoint,
)
from catdiff.io.state_dicts import load_state_strict
from catdiff.models import NULL_CLASS, build_model, canonical_config, model_config
from catdiff.pipeline import GUIDE_DIR, write_network
from catdiff.training.augment import AUGMENT_DIM, augment, with_augmentation
from catdiff.training.budget import Clock, finished, learning_rate_factor, run_progress
from catdiff.training.config import TrainConfig
from catdiff.training.ema import EMA
from catdiff.training.progress import Progress, append_record, truncate_log
from catdiff.training.signals import StopSignals, TrainingInterrupted
from catdiff.training.tasks import AutoencoderTask, DiffusionTask, Task
from catdiff.training.trackers import CURVES, PROJECT, check_trackers, hyperparameters, tracker_dir

log = logging.getLogger(__name__)

PREVIEWS_DIR = "previews"


def make_task(config: TrainConfig, network: torch.nn.Module, *, pixels: bool) -> Task:
    """Autoencoders (a model with latents to decode) learn to reconstruct; every other model learns to denoise."""
    if hasattr(network, "decode_latents"):
        return AutoencoderTask(network, kl_weight=config.kl_weight)
    # Pixels live in [-1, 1]: keeping the x0 estimate in range stops the first, noisiest
    # sampling steps from throwing samples off the data (Ho et al. 2020, sec. 3.3); the
    # dynamic threshold of Imagen does it without saturating colours.
    return DiffusionTask(
        NoiseSchedule.from_config(config.schedule),
        config.prediction,
        min_snr_gamma=config.min_snr_gamma,
        noise_levels=config.noise_levels,
        clip_x0=1.0 if pixels else None,
        dynamic_percentile=0.995 if pixels else None,
    )


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator owned by one training step, so that any step can be replayed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


class BatchOrder:
    """Shuffled, drop-last epochs over ``n`` items; batch ``k`` is a pure function of ``k``."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise UserError(f"the data has {n} items, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.batches_per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, k: int) -> Tensor:
        epoch, j = divmod(k, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]


def class_labels(network: torch.nn.Module, labels: Tensor | None) -> Tensor | None:
    """The labels a class-conditional ``network`` (one with ``num_classes``) trains on, checked;
    None for other networks."""
    num_classes = getattr(network, "num_classes", None)
    if num_classes is None:
        return None
    if labels is None:
        raise UserError("a class-conditional model needs labelled data: a digits folder or a latent cache of one")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must be 0 .. {num_classes - 1} for this model, found {labels.max().item()}")
    return labels


class Trainer:
    """Trains a model on a tensor dataset of images or latents: a denoiser, or an autoencoder
    (the task is chosen by the model, see :mod:`catdiff.training.tasks`)."""

    def __init__(
        self,
        config: TrainConfig,
        data: Tensor,
        run_dir: Path,
        *,
        data_info: dict[str, Any],
        mirrored: Tensor | None = None,
        labels: Tensor | None = None,
        autoencoder: dict[str, Any] | None = None,
        init: dict[str, Tensor] | None = None,
        trackers: list[str] | None = None,
    ) -> None:
        """``data``: uint8 images or float latents; ``mirrored``: their precomputed mirror images;
        ``labels``: their classes, which a class-conditional model learns from (others ignore
        them); ``autoencoder``: the record of the autoencoder the latents came from; ``init``:
        the weights the network (and its EMA) start from, those of ``config.init``; ``trackers``:
        where the curves go besides ``log.jsonl`` (:mod:`catdiff.training.trackers`)."""
        self.config = config
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.mirrored = mirrored
        self.autoencoder = autoencoder
        self._decoder: Autoencoder | None = None  # loaded for the first preview
        self.data_info = data_info
        # cpu=True lets `accelerate launch --multi_gpu` / torchrun run DDP over gloo without a GPU.
        self.trackers = trackers or []
        check_trackers(self.trackers)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            cpu=not torch.cuda.is_available(),
            log_with=self.trackers or None,
            project_dir=tracker_dir(run_dir, self.trackers),
        )
        if self.trackers:
            self.accelerator.init_trackers(PROJECT, config=hyperparameters(config))
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.order = BatchOrder(len(data), config.batch_size * config.grad_accum * self.world, config.seed)
        torch.manual_seed(config.seed)
        network = build_model(config.model)
        if init is not None:
            load_state_strict(network, with_augmentation(network, init), Path(config.init or "--init"))
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        network = network.to(memory_format=self.memory_format)
        self.labels = class_labels(network, labels)
        if config.augment and getattr(getattr(network, "config", None), "augment_dim", 0) != AUGMENT_DIM:
            raise UserError(f"augmentation needs a unet with augment_dim {AUGMENT_DIM} in its model config")
        self.task = make_task(config, network, pixels=data.dtype == torch.uint8)
        self.ema = EMA(network, max_decay=config.ema_max_decay, power=config.ema_power)
        # The fused AdamW kernel: 10% more images/s than the per-tensor loop on a 2-core CPU
        # (bench/trainer_vs_diffusers.py), and as deterministic.
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=True
        )
        self.clock = Clock()
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: learning_rate_factor(s, config, self.clock.spent)
        )
        self.network, self.optimizer = self.accelerator.prepare(network, optimizer)
        self.ema.model.to(self.accelerator.device)
        self.step = 0
        # Called on the main process every ``config.eval_every`` steps with the newest checkpoint
        # saved; returns figures for the trackers (catdiff.training.report.evaluate_run).
        self.evaluator: Callable[[], dict[str, float]] | None = None

    # --- state -------------------------------------------------------------------------------

    @property
    def run_config(self) -> dict[str, Any]:
        return {
            "model": model_config(self.accelerator.unwrap_model(self.network)),
            **self.task.config(),
            "sample_shape": list(self.data.shape[1:]),
            "autoencoder": self.autoencoder,
            "data": self.data_info,
            "train": asdict(self.config),
            **self.sampling(),
        }

    def sampling(self) -> dict[str, Any]:
        """How the run's model samples, where that differs from the default: autoguided by its
        guide, once that has been written."""
        if self.config.guide_at is None or not (self.run_dir / GUIDE_DIR).is_dir():
            return {}
        sampling: dict[str, Any] = {"guidance": self.config.guidance}
        if self.config.guidance_interval is not None:
            sampling["guidance_interval"] = list(self.config.guidance_interval)
        return {"sampling": sampling}

    def save_guide(self) -> Path:
        """The EMA weights now, as the model folder ``RUN/guide`` (written whole or not at all)."""
        return replace_folder(self.run_dir / GUIDE_DIR, lambda folder: write_network(folder, self.ema.model))

    def save(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        path = None
        if self.accelerator.is_main_process:
            training_state = {
                "step": self.step,
                "elapsed": self.clock.spent,
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            path = save_checkpoint(
                self.run_dir,
                self.step,
                self.run_config,
                self.accelerator.unwrap_model(self.network).state_dict(),
                self.ema.state_dict(),
                training_state,
                keep=self.config.keep_checkpoints,
            )
        self.accelerator.wait_for_everyone()
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint of the run folder; False if there is none."""
        found = checkpoint_dirs(self.run_dir)
        if not found:
            return False
        path = found[-1]
        saved, ours = read_config(path), json.loads(json.dumps(self.run_config))
        task_keys = self.task.config().keys()
        same_model = canonical_config(saved["model"]) == canonical_config(ours["model"])
        if not same_model or any(saved.get(k) != ours[k] for k in task_keys):
            raise UserError(f"cannot resume {path}: its model or {'/'.join(task_keys)} config differs from this run's")
        state = read_training_state(path)
        load_state_strict(self.accelerator.unwrap_model(self.network), read_weights(path, ema=False), path)
        self.ema.load_state_dict(read_weights(path, ema=True))
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.clock.spent = float(state.get("elapsed", 0.0))
        log.info("resumed from %s at step %d after %.1f s of training", path, self.step, self.clock.spent)
        return True

    # --- one step ------------------------------------------------------------------------------

    def batch(self, step: int) -> tuple[Tensor, ...]:
        """The global batch of ``step`` (all processes, all accumulation rounds) and its draws."""
        generator = step_generator(self.config.seed, step)
        indices = self.order(step)
        x0 = self.data[indices]
        if self.config.flip:
            x0 = random_hflip(x0, generator, None if self.mirrored is None else self.mirrored[indices])
        x0 = uint8_to_float(x0) if x0.dtype == torch.uint8 else x0.float()
        condition = []
        if self.config.augment:
            x0, augmentation = augment(x0, self.config.augment, generator)
            condition.append(augmentation)
        draws = self.task.draw(x0, generator)
        if self.labels is not None:
            # Classifier-free guidance learns the unconditional model too (Ho & Salimans 2022, alg. 1).
            condition.insert(0, drop_labels(self.labels[indices], self.config.label_dropout, NULL_CLASS, generator))
        return (x0, *draws, *condition)

    def micro_batches(self, step: int) -> list[tuple[Tensor, ...]]:
        """This process's share of each accumulation round of ``step``."""
        size = self.config.batch_size * self.world
        device = self.accelerator.device
        batch = self.batch(step)
        rounds = [slice(m * size + self.rank, (m + 1) * size, self.world) for m in range(self.config.grad_accum)]
        x0, *rest = batch
        x0 = x0.contiguous(memory_format=self.memory_format) if x0.ndim == 4 else x0
        return [(x0[share].to(device), *(v[share].to(device) for v in rest)) for share in rounds]

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` rounds (the LR schedule steps in ``fit``); returns the mean loss."""
        self.network.train()
        rounds = self.micro_batches(self.step)
        torch.manual_seed(self.config.seed * 1_000_003 + self.step * self.world + self.rank)  # dropout
        total = 0.0
        for m, micro_batch in enumerate(rounds):
            last = m == len(rounds) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.network):
                loss = self.task.loss(self.network, *micro_batch) / len(rounds)
                self.accelerator.backward(loss)
            total += loss.item()
        if self.config.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.accelerator.unwrap_model(self.network), self.step)
        return total

    # --- the loop ------------------------------------------------------------------------------

    def preview(self) -> Path:
        if self.autoencoder is not None and self._decoder is None:
            self._decoder = load_autoencoder(self.autoencoder["source"])
        options = {"n": self.config.preview_n, "steps": self.config.preview_steps, "autoencoder": self._decoder}
        images = self.task.preview(self.ema.model, self.data, self.run_config, **options)
        return save_grid(images, self.run_dir / PREVIEWS_DIR / f"step-{self.step:07d}.png")

    def fit(self) -> Path | None:
        """Train until ``max_steps`` or the ``time_budget`` is reached; returns the final checkpoint
        (on the main process). SIGINT or SIGTERM ends the run after the current step: its
        checkpoint is written, then :class:`TrainingInterrupted` is raised."""
        config, main = self.config, self.accelerator.is_main_process
        if finished(self.step, self.clock.spent, config):
            log.info("nothing to train: the run ended at step %d after %.1f s", self.step, self.clock.spent)
            return None
        if main:  # no step logged twice, whether resumed or started again after a kill
            truncate_log(self.run_dir, self.step)
            remove_stale(self.run_dir, ".*.tmp-*")
            if (self.run_dir / CHECKPOINTS_DIR).is_dir():
                remove_stale(self.run_dir / CHECKPOINTS_DIR, f".{CHECKPOINT_PREFIX}*")
        images_per_step = config.batch_size * config.grad_accum * self.world
        window_loss, window_steps, window_start = 0.0, 0, self.clock.spent
        guide_due = config.guide_at is not None and run_progress(self.step, self.clock.spent, config) < config.guide_at
        final = None
        with StopSignals() as signals, Progress(config, self.step, self.clock.spent, enabled=main) as progress:
            while True:
                with self.clock:
                    window_loss += self.train_step()
                window_steps += 1
                interrupted = self._agree(signals.received or 0)
                self.lr_scheduler.step()  # after the clock, so a schedule on time counts this step
                end = interrupted or finished(self.step, self.clock.spent, config)
                progress.update(self.step, self.clock.spent)
                if self.step % config.log_every == 0 or end:
                    loss = self.accelerator.reduce(torch.tensor(window_loss / window_steps), "mean").item()
                    record = {
                        "step": self.step,
                        "loss": loss,
                        "lr": self.lr,
                        "img_per_s": window_steps * images_per_step / max(1e-9, self.clock.spent - window_start),
                        "elapsed": self.clock.spent,
                        "time": time.time(),
                    }
                    progress.record(record)
                    if main:
                        append_record(self.run_dir, record)
                    if self.trackers:
                        self.accelerator.log({name: record[name] for name in CURVES}, step=self.step)
                    window_loss, window_steps, window_start = 0.0, 0, self.clock.spent
                preview_due = config.preview_every and (self.step % config.preview_every == 0 or end)
                if preview_due and main and not interrupted:
                    progress.note(f"preview {self.preview()}")
                if guide_due and run_progress(self.step, self.clock.spent, config) >= (config.guide_at or 0):
                    guide_due = False
                    if main:
                        progress.note(f"guide {self.save_guide()}")
                if self.step % config.checkpoint_every == 0 or end:
                    final = self.save()
                    progress.note(f"checkpoint {final}")
                if end:
                    break
                if config.eval_every and self.step % config.eval_every == 0 and self.evaluator is not None:
                    self._evaluate(checkpointed=self.step % config.checkpoint_every == 0)
        if self.trackers:
            self.accelerator.end_training()
        if interrupted:
            log.info("stopped at step %d; continue with --resume", self.step)
            raise TrainingInterrupted(interrupted, final)
        return final

    def _evaluate(self, *, checkpointed: bool) -> None:
        """An evaluation during the run, of a checkpoint of this step (written for it if need be)."""
        if not checkpointed:
            self.save()
        figures = self.evaluator() if self.accelerator.is_main_process and self.evaluator is not None else {}
        self.accelerator.wait_for_everyone()
        if self.trackers and figures:
            self.accelerator.log(figures, step=self.step)

    def _agree(self, signum: int) -> int:
        """The stop signal any process received (0: none); with several processes, also makes
        every clock read the slowest one, so all agree on the learning rate and on when to stop."""
        if self.world == 1:
            return signum
        local = torch.tensor([[float(signum), self.clock.spent]], dtype=torch.float64, device=self.accelerator.device)
        agreed = self.accelerator.gather(local).amax(0).cpu()
        self.clock.spent = agreed[1].item()
        return int(agreed[0].item())
