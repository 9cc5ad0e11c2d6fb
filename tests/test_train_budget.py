"""Training to a time budget: the stop, the schedule on time, the budget carried over by resume."""

from __future__ import annotations

import itertools
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from synthetic import TINY_UNET

from catdiff.errors import UserError
from catdiff.io.checkpoints import checkpoint_dirs, read_training_state
from catdiff.training import budget
from catdiff.training.budget import learning_rate_factor, time_left
from catdiff.training.config import DEFAULT_MAX_STEPS, TrainConfig
from catdiff.training.progress import read_log
from catdiff.training.signals import TrainingInterrupted
from catdiff.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
TICK = 0.25  # seconds a step takes on the fake clock (exact in binary)
DATA = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def budget_trainer(run_dir: Path, **options: object) -> Trainer:
    values = {"model": TINY_UNET, "batch_size": 4, "preview_every": 0, "checkpoint_every": 1000, "log_every": 1}
    values |= {"warmup_steps": 0, "lr": 1e-3, "lr_schedule": "cosine", **options}
    return Trainer(TrainConfig(**values), DATA, run_dir, data_info={})


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step of training time takes exactly TICK seconds."""
    ticks = itertools.count()
    monkeypatch.setattr(budget, "perf_counter", lambda: next(ticks) * TICK)


def test_max_steps_defaults_unless_there_is_a_budget() -> None:
    assert TrainConfig().max_steps == DEFAULT_MAX_STEPS
    assert TrainConfig(time_budget=60).max_steps is None
    assert TrainConfig(time_budget=60, max_steps=5).max_steps == 5
    for bad in ({"time_budget": 0}, {"time_budget": -1.0}, {"max_steps": 0}):
        with pytest.raises(UserError, match=f"invalid training option {next(iter(bad))}="):
            TrainConfig(**bad)


def test_cosine_decay_follows_training_time_over_the_budget() -> None:
    config = TrainConfig(lr_schedule="cosine", warmup_steps=4, time_budget=100)
    assert learning_rate_factor(1, config, spent=90) == pytest.approx(0.5)  # warm-up is in steps
    assert learning_rate_factor(4, config, spent=0) == 1
    assert learning_rate_factor(1000, config, spent=50) == pytest.approx(0.5)
    assert learning_rate_factor(10, config, spent=25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate_factor(10, config, spent=150) == pytest.approx(0)
    both = TrainConfig(lr_schedule="cosine", warmup_steps=0, time_budget=100, max_steps=10)
    assert learning_rate_factor(5, both, spent=10) == pytest.approx(0.5)  # the nearer end decides
    assert learning_rate_factor(5, TrainConfig(warmup_steps=0, time_budget=100), spent=50) == 1  # constant
    steps_only = TrainConfig(lr_schedule="cosine", warmup_steps=0, max_steps=10)
    assert learning_rate_factor(5, steps_only, spent=1e9) == pytest.approx(0.5)  # time plays no part
    assert time_left(5, 40.0, 2.0, both) == 10.0 and time_left(5, 99.0, 2.0, both) == 1.0


def test_a_budget_stops_by_time_and_the_schedule_runs_on_it(tmp_path: Path, fake_clock: None) -> None:
    trainer = budget_trainer(tmp_path / "run", time_budget=8 * TICK)
    final = trainer.fit()
    assert trainer.step == 8 and final == checkpoint_dirs(tmp_path / "run")[-1] and final.name == "step-0000008"
    assert read_training_state(final)["elapsed"] == 8 * TICK
    records = read_log(tmp_path / "run")
    assert [r["elapsed"] for r in records] == [k * TICK for k in range(1, 9)]
    # The LR of step k decays by the training time of the k - 1 steps before it.
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * (k - 1) / 8)) for k in range(1, 9)]
    assert [r["lr"] for r in records] == pytest.approx(expected)


def test_a_resumed_budget_run_continues_the_same_budget_exactly(tmp_path: Path, fake_clock: None) -> None:
    straight = budget_trainer(tmp_path / "straight", time_budget=6 * TICK)
    straight.fit()
    first = budget_trainer(tmp_path / "stopped", time_budget=6 * TICK)
    step = first.train_step

    def interrupt_at_step_2() -> float:
        loss = step()
        if first.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    first.train_step = interrupt_at_step_2
    with pytest.raises(TrainingInterrupted):
        first.fit()
    assert read_training_state(checkpoint_dirs(tmp_path / "stopped")[-1])["elapsed"] == 2 * TICK
    second = budget_trainer(tmp_path / "stopped", time_budget=6 * TICK)
    assert second.resume() and second.clock.spent == 2 * TICK
    second.fit()
    assert second.step == straight.step == 6 and second.clock.spent == 6 * TICK
    for a, b in zip(second.network.parameters(), straight.network.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [r["step"] for r in read_log(tmp_path / "stopped")] == list(range(1, 7))
    done = budget_trainer(tmp_path / "stopped", time_budget=6 * TICK)
    assert done.resume() and done.fit() is None  # nothing left to train


def test_a_real_time_budget_ends_with_a_checkpoint_of_its_time(tmp_path: Path) -> None:
    trainer = budget_trainer(tmp_path / "run", time_budget=0.5, max_steps=None)
    final = trainer.fit()
    state = read_training_state(final)
    assert trainer.clock.spent >= 0.5 and state["elapsed"] == trainer.clock.spent and state["step"] == trainer.step
    seconds_per_step = trainer.clock.spent / trainer.step
    assert trainer.clock.spent < 0.5 + 2 * seconds_per_step
    assert read_log(tmp_path / "run")[-1]["step"] == trainer.step
