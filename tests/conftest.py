"""Shared test helpers.

Real data and weights live outside the project, in ``../shared`` (see
``../shared/data/README.md``). A test that needs them calls ``require_shared(path)`` (or
takes the ``shared_dir`` fixture): when the path is absent the test is skipped with the
reason, except when ``CATDIFF_REQUIRE_SHARED=1`` is set, where it fails, so that a machine
that is meant to have the data cannot pass by skipping.

Other test files use ``from conftest import require_shared, SHARED_DIR`` or the fixtures.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from synthetic import TINY_UNET, make_image_folder

from catdiff.io.checkpoints import write_model_folder
from catdiff.models import build_model, model_config

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def require_shared(path: str | os.PathLike = "") -> Path:
    """``path`` (relative to ``../shared``, or absolute), skipping or failing the calling
    test when it does not exist."""
    full = SHARED_DIR / path  # an absolute path replaces SHARED_DIR
    if not full.exists():
        reason = f"shared data not found: {full}"
        if os.environ.get("CATDIFF_REQUIRE_SHARED") == "1":
            pytest.fail(f"{reason} (CATDIFF_REQUIRE_SHARED=1)", pytrace=False)
        pytest.skip(reason)
    return full


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight a busy machine for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_dir() -> Path:
    """The ``../shared`` folder (skip, or fail under CATDIFF_REQUIRE_SHARED=1, if absent)."""
    return require_shared()


def catdiff(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the command line as a user would, but in this process (a fresh interpreter spends ~3 s
    importing torch): stdout and stderr captured, the exit code returned. An exception that
    escapes ``main`` prints its traceback to stderr with exit code 1, as a fresh process would.
    :func:`catdiff_process` runs a real process."""
    from catdiff.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, []  # main's logging.basicConfig writes to this call's stderr
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse's --help and usage errors
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        root.handlers = handlers
    return subprocess.CompletedProcess(["catdiff", *args], code, out.getvalue(), err.getvalue())


def catdiff_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the command line in a fresh process."""
    return subprocess.run([sys.executable, "-m", "catdiff", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def write_tiny_model(folder: Path, model: dict, sample_shape: list[int], prediction: str = "eps") -> Path:
    """A model folder of a randomly initialised (seed 0) denoiser on a linear schedule."""
    torch.manual_seed(0)
    network = build_model(model)
    config = {
        "model": model_config(network),
        "diffusion": {
            "schedule": {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02},
            "prediction": prediction,
        },
        "sample_shape": sample_shape,
    }
    return write_model_folder(folder, config, network.state_dict())


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TINY_UNET, [3, 8, 8])


@pytest.fixture(scope="session")
def pipeline_dir(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipelines")
    reference = make_image_folder(root / "reference", n=24, size=8)
    out = root / "tiny"
    result = catdiff(
        "export", str(model_folder), "--out", str(out), "--fp16", "--sampler", "ddpm", "--steps", "7",
        "--reference-images", str(reference),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalar curves of every TensorBoard event file under ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            curves.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return curves
