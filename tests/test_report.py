"""The held-out share of `catdiff train` and its evaluation at the end: RUN/heldout.json, RUN/report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import catdiff, tensorboard_scalars
from helpers.tiny import TINY_LATENT
from synthetic import make_image_folder

from catdiff.data.holdout import HELDOUT_FILE, choose_heldout, heldout_count, run_heldout, training_files
from catdiff.data.latent_cache import LatentCache
from catdiff.data.sources import latent_training_data
from catdiff.errors import UserError
from catdiff.training.report import EVALUATIONS_FILE, REPORT_FILE, eval_samples, report_lines
from catdiff.training.trackers import TRACKERS_DIR


def name_only_folder(root: Path, n: int) -> Path:
    """``n`` empty .png files: the held-out choice reads names only."""
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"img{i:04d}.png").touch()
    return root


@pytest.mark.parametrize(("count", "heldout"), [(50, 0), (99, 0), (100, 5), (150, 8), (1000, 50), (3000, 150)])
def test_five_percent_is_held_out_none_under_100_images(count: int, heldout: int) -> None:
    assert heldout_count(count) == heldout
    assert heldout_count(count, share=0.01) == {50: 0, 99: 0, 100: 1, 150: 2, 1000: 50, 3000: 50}[count]


def test_the_choice_is_deterministic_recorded_and_reused(tmp_path: Path) -> None:
    folder = name_only_folder(tmp_path / "images", 150)
    chosen = choose_heldout(folder)
    assert len(chosen) == 8 and chosen == choose_heldout(folder) and chosen != choose_heldout(folder, seed=1)
    run = tmp_path / "run"
    assert run_heldout(folder, run) == chosen
    record = json.loads((run / HELDOUT_FILE).read_text())
    assert record["files"] == chosen and record["folder"] == str(folder.resolve()) and record["seed"] == 0
    assert run_heldout(folder, run, share=0.5) == chosen  # a re-run or --resume keeps the recorded split
    assert len(training_files(folder, chosen)) == 142
    assert run_heldout(name_only_folder(tmp_path / "few", 50), tmp_path / "run2") == []


def test_held_out_files_are_not_in_the_latent_cache(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=10, size=16)
    heldout = ["img003.png", "img007.png"]
    source = latent_training_data(data, tmp_path / "latents", size=16, heldout=heldout)
    assert source.info["count"] == 8 and len(LatentCache.open(tmp_path / "latents").latents) == 8
    # The cache is complete for this split, and refused for another.
    assert latent_training_data(data, tmp_path / "latents", size=16, heldout=heldout).info["count"] == 8
    with pytest.raises(UserError, match="other files"):
        latent_training_data(data, tmp_path / "latents", size=16)


def test_the_report_says_what_it_measured_and_warns_of_copies() -> None:
    assert [eval_samples(n) for n in (0, 50, 150, 3000)] == [100, 100, 150, 500]
    report = {"samples": 4, "frechet": 1.5, "memorised_fraction": 0.02, "nearest_median_ratio": 0.9}
    lines = report_lines(report)
    assert len(lines) == 4 and "1.5" in lines[0] and "2.00%" in lines[1] and lines[-1].startswith("warning")
    assert len(report_lines({**report, "memorised_fraction": 0.0})) == 3
    assert "not measured" in report_lines({**report, "memorised_fraction": None})[-1]


@pytest.mark.slow
def test_a_folder_run_ends_with_a_report(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=100, size=32)
    run = tmp_path / "run"
    flags = [f for f in TINY_LATENT if f != "--no-eval"]
    evaluation = ["--eval-samples", "4", "--eval-every", "1", "--log-with", "tensorboard"]
    result = catdiff("train", str(data), "--out", str(run), *flags, "--max-steps", "2", *evaluation)
    assert result.returncode == 0, result.stderr
    history = [json.loads(line) for line in (run / EVALUATIONS_FILE).read_text().splitlines()]
    assert [r["steps"] for r in history] == [1, 2] and "evaluation at step 1" in result.stdout
    assert set(tensorboard_scalars(run / TRACKERS_DIR)) >= {"loss", "lr", "img_per_s", "frechet", "memorised_fraction"}
    assert "encoding 95 images" in result.stderr and "memorised fraction" in result.stdout
    report = json.loads((run / REPORT_FILE).read_text())
    assert {"frechet", "memorised_fraction", "nearest_median_ratio", "cpu", "precision", "elapsed_s"} <= set(report)
    assert (report["samples"], report["steps"], report["init"], report["heldout_images"]) == (4, 2, None, 5)
    assert report["precision"] == "fp32" and report["train_images"] == 95
    assert json.loads((run / HELDOUT_FILE).read_text())["files"] == choose_heldout(data)
    assert history[-1] == report
