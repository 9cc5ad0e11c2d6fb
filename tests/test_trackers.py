"""`catdiff train --log-with`: the curves reach accelerate's trackers, kept offline in the run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_one_line_error, catdiff, tensorboard_scalars
from helpers.tiny import TINY_LATENT
from synthetic import make_image_folder

from catdiff.training.config import TrainConfig
from catdiff.training.trackers import TRACKERS_DIR, hyperparameters


def test_tensorboard_gets_the_curves_of_log_jsonl(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=32)
    run = tmp_path / "run"
    flags = [*TINY_LATENT, "--max-steps", "3", "--log-every", "1", "--log-with", "tensorboard"]
    result = catdiff("train", str(data), "--out", str(run), *flags)
    assert result.returncode == 0, result.stderr
    curves = tensorboard_scalars(run / TRACKERS_DIR)
    assert [step for step, _ in curves["loss"]] == [1, 2, 3]
    assert set(curves) >= {"loss", "lr", "img_per_s"}


@pytest.mark.parametrize(("trackers", "words"), [("tensorboard,comet", ("unknown tracker 'comet'",))])
def test_an_unknown_tracker_is_a_one_line_error(tmp_path: Path, trackers: str, words: tuple[str, ...]) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=32)
    result = catdiff("train", str(data), "--out", str(tmp_path / "run"), *TINY_LATENT, "--log-with", trackers)
    assert_one_line_error(result, *words)


def test_hyperparameters_are_scalars_for_the_trackers() -> None:
    flat = hyperparameters(TrainConfig(time_budget=60.0))
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert flat["max_steps"] == "none" and flat["model"] == '{"type": "unet"}' and flat["time_budget"] == 60.0
