"""The training-speed benchmark runs on the shipped recipes it names in docs (their ``"auto"`` options included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]


def test_trainer_vs_diffusers_runs_and_prints_the_ratio() -> None:
    command = [sys.executable, str(ROOT / "bench" / "trainer_vs_diffusers.py"), "--recipe", "folder-10m"]
    command += ["--side", "8", "--steps", "2", "--warmup", "1", "--rounds", "1"]
    command += ["--channels-last"]  # the option the recipe leaves to "auto", on both sides
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ratio_row = done.stdout.strip().splitlines()[-1]
    assert ratio_row.endswith("x |") and float(ratio_row.split("|")[3].strip().rstrip("x")) > 0
    assert "channels-last" in done.stdout
