"""Stopping a run with SIGINT / SIGTERM, the progress a person reads, and a log cut by a kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from synthetic import TINY_UNET, make_image_folder

from catdiff.io.checkpoints import checkpoint_dirs, read_training_state
from catdiff.training.config import TrainConfig
from catdiff.training.progress import LOG_FILE, read_log, truncate_log
from catdiff.training.signals import StopSignals, TrainingInterrupted
from catdiff.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def tiny_trainer(run_dir: Path, **options: object) -> Trainer:
    values = {"model": TINY_UNET, "batch_size": 4, "preview_every": 0, "checkpoint_every": 1000, "log_every": 1}
    return Trainer(TrainConfig(**{**values, **options}), DATA, run_dir, data_info={})


def signal_at(trainer: Trainer, step: int, signum: int, times: int = 1) -> None:
    """Make ``trainer`` receive ``signum`` (``times`` times) at the end of ``step``."""
    train_step = trainer.train_step

    def wrapped() -> float:
        loss = train_step()
        if trainer.step == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return loss

    trainer.train_step = wrapped


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_step_saves_and_restores_the_handlers(tmp_path: Path, signum: int) -> None:
    before = signal.getsignal(signum)
    trainer = tiny_trainer(tmp_path / "run", max_steps=100)
    signal_at(trainer, 3, signum)
    with pytest.raises(TrainingInterrupted) as raised:
        trainer.fit()
    assert raised.value.signum == signum and isinstance(raised.value, KeyboardInterrupt)
    assert raised.value.checkpoint == checkpoint_dirs(tmp_path / "run")[-1]
    assert read_training_state(raised.value.checkpoint)["step"] == 3
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2, 3]
    assert signal.getsignal(signum) is before


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    trainer = tiny_trainer(tmp_path / "run", max_steps=100)
    signal_at(trainer, 2, signal.SIGINT, times=2)
    with pytest.raises(KeyboardInterrupt) as raised:
        trainer.fit()
    assert not isinstance(raised.value, TrainingInterrupted) and trainer.step == 2
    assert checkpoint_dirs(tmp_path / "run") == []
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_no_handler_is_installed() -> None:
    before, seen = signal.getsignal(signal.SIGINT), []

    def enter() -> None:
        with StopSignals() as signals:
            seen.append(signal.getsignal(signal.SIGINT))
        seen.append(signals.received)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [before, None]


def test_progress_lines_name_the_step_loss_speed_time_and_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="catdiff")
    tiny_trainer(tmp_path / "steps", max_steps=4, log_every=2, checkpoint_every=2).fit()
    tiny_trainer(tmp_path / "budget", time_budget=0.2, log_every=1).fit()
    lines = [r.getMessage() for r in caplog.records]
    step_lines = [line for line in lines if line.startswith("step ")]
    assert step_lines[0].startswith("step 2/4 | loss ") and " img/s | " in step_lines[0]
    assert step_lines[0].endswith(" left") and step_lines[1].startswith("step 4/4 ")
    assert all(line.endswith(" left") and "/" not in line.split("|")[0] for line in step_lines[2:])
    checkpoint = tmp_path / "steps" / "checkpoints"
    assert f"checkpoint {checkpoint / 'step-0000002'}" in lines and f"checkpoint {checkpoint / 'step-0000004'}" in lines


def test_a_log_line_cut_by_a_kill_is_skipped_and_truncated(tmp_path: Path) -> None:
    records = [{"step": k, "loss": 1 / k} for k in range(1, 6)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / LOG_FILE).write_text(text + '{"step": 6, "lo')
    assert read_log(tmp_path) == records
    truncate_log(tmp_path, 3)
    assert (tmp_path / LOG_FILE).read_text() == "".join(json.dumps(r) + "\n" for r in records[:3])


@pytest.mark.slow
def test_ctrl_c_through_the_cli_saves_exits_130_and_resumes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "discs", n=16, size=16)
    recipe = tmp_path / "recipe.json"
    model = {k: v for k, v in TINY_UNET.items() if k not in ("in_channels", "out_channels")}  # the CLI fills them
    options = {"model": model, "time_budget": 600, "max_steps": None, "batch_size": 4, "log_every": 1}
    recipe.write_text(json.dumps(options | {"checkpoint_every": 100_000, "preview_every": 0, "size": 16}))
    out = tmp_path / "run"
    train = [sys.executable, "-m", "catdiff", "train", str(data), "--out", str(out), "--config", str(recipe)]
    train.append("--pixels")  # pixel space: the recipe's TINY_UNET is 3-channel
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(train, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(read_log(out)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=10)
    assert time.monotonic() - sent < 10 and process.returncode == 130, stderr[-2000:]
    (last,) = checkpoint_dirs(out)
    stopped = read_training_state(last)
    assert stopped["step"] == read_log(out)[-1]["step"] >= 3 and stopped["elapsed"] > 0
    assert "step 1 | loss " in stderr and f"checkpoint {last}" in stderr and "interrupted" in stderr
    assert "Traceback" not in stderr

    more = str(stopped["step"] + 2)
    result = subprocess.run([*train, "--resume", "--max-steps", more], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = read_training_state(checkpoint_dirs(out)[-1])
    assert resumed["step"] == stopped["step"] + 2 and resumed["elapsed"] > stopped["elapsed"]
    assert [r["step"] for r in read_log(out)] == list(range(1, stopped["step"] + 3))
