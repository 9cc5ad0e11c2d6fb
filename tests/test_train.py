"""The trainer: exact resume after a real SIGKILL, 2-process DDP on CPU, logs and previews."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import TINY_UNET, make_image_folder

from catdiff.io.checkpoints import checkpoint_dirs

N = 5  # checkpoint interval; runs are 2N steps


# Pixel space with every option given, and the default: TAESD latents with the recipe's
# augmentation (the memory format pinned, since the default measures it and a rerun may differ).
SPACES = {
    "pixels": ["--pixels", "--size", "16", "--model", "unet", "--warmup", "3", "--lr", "1e-3"],
    "latents": ["--size", "32", "--augment", "0.5", "--no-channels-last", "--no-eval"],
}


def train_args(data: Path, out: Path, *extra: str, space: str = "pixels") -> list[str]:
    return [
        "train", str(data), "--out", str(out), *SPACES[space], "--channels", "32", "--channel-mult", "1,2",
        "--attention-levels", "1", "--batch-size", "8", "--max-steps", str(2 * N), "--checkpoint-every", str(N),
        "--keep", "5", "--preview-every", "0", "--log-every", "1", "--seed", "3", *extra,
    ]  # fmt: skip


def catdiff(*args: str) -> list[str]:
    return [sys.executable, "-m", "catdiff", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = checkpoint_dirs(run)[-1]
    assert last.name == f"step-{2 * N:07d}"
    return {
        **load_file(last / "model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(last / "ema.safetensors").items()},
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "discs", n=48, size=16)


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    subprocess.run(catdiff(*train_args(data, out)), check=True, env=env(), capture_output=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("space", SPACES)
def test_kill_and_resume_is_bit_exact(data: Path, space: str, tmp_path: Path) -> None:
    full = tmp_path / "full"
    subprocess.run(catdiff(*train_args(data, full, space=space)), check=True, env=env(), capture_output=True)
    out = tmp_path / "killed"
    process = subprocess.Popen(
        catdiff(*train_args(data, out, space=space)), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = out / "checkpoints" / f"step-{N:07d}"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert [p.name for p in checkpoint_dirs(out)] == [first.name]

    resume = catdiff(*train_args(data, out, "--resume", space=space))
    subprocess.run(resume, check=True, env=env(), capture_output=True)

    resumed, whole = final_weights(out), final_weights(full)
    assert resumed.keys() == whole.keys()
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * N + 1))


def test_refuses_to_overwrite_a_run_without_resume(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    result = subprocess.run(catdiff(*train_args(data, run)), env=env(), capture_output=True, text=True)
    assert result.returncode == 2
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    assert len(checkpoint_dirs(run)) == len(checkpoint_dirs(uninterrupted))


def test_log_holds_loss_lr_and_throughput(uninterrupted: Path) -> None:
    records = [json.loads(line) for line in (uninterrupted / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 2 * N + 1))
    assert all(r["img_per_s"] > 0 and r["loss"] > 0 for r in records)
    assert records[0]["lr"] == pytest.approx(1e-3 / 3)
    assert records[-1]["lr"] == pytest.approx(1e-3)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_global_batch(
    data: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """2 processes x batch 4 see the same data and noise as 1 process x batch 8 (the uninterrupted run)."""
    out = tmp_path / "ddp"
    args = train_args(data, out)
    args[args.index("--batch-size") + 1] = "4"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", "-m", "catdiff", *args,
    ]  # fmt: skip
    result = subprocess.run(launch, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    def losses(run: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]

    assert losses(out) == pytest.approx(losses(uninterrupted), rel=1e-5)
    # Gradients agree to float rounding (the all-reduce sums in another order); Adam turns a
    # rounding-level change of a near-zero gradient into an lr-sized step for a few weights.
    ddp, single = final_weights(out), final_weights(uninterrupted)
    differences = torch.cat([(ddp[k] - single[k]).abs().flatten() for k in single])
    assert differences.max() < 1e-3 and differences.mean() < 1e-6


@pytest.mark.slow
def test_preview_grid_is_written(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    args = train_args(data, out, "--preview-every", str(N))
    args[args.index("--max-steps") + 1] = str(N)
    subprocess.run(catdiff(*args), check=True, env=env(), capture_output=True)
    from PIL import Image

    grid = Image.open(out / "previews" / f"step-{N:07d}.png")
    assert grid.width > 16 * 4 and grid.height > 16 * 4


def test_gradient_accumulation_equals_the_larger_batch(data: Path, tmp_path: Path, one_thread: None) -> None:
    """2 rounds of batch 4 and one round of batch 8 take the same optimizer steps."""
    from catdiff.data.image_folder import ImageFolder
    from catdiff.training.trainer import TrainConfig, Trainer

    images = ImageFolder(data, 16).load_all()
    weights = []
    for batch_size, accum in ((8, 1), (4, 2)):
        config = TrainConfig(
            model=TINY_UNET, batch_size=batch_size, grad_accum=accum, max_steps=3, preview_every=0, lr=1e-3
        )
        trainer = Trainer(config, images, tmp_path / f"b{batch_size}", data_info={})
        trainer.fit()
        weights.append(torch.cat([p.detach().flatten() for p in trainer.network.parameters()]))
    differences = (weights[0] - weights[1]).abs()
    assert differences.max() < 1e-3 and differences.mean() < 1e-6
