"""`catdiff train --init MODEL`: fine-tuning starts from a trained model's EMA weights, takes its
network and diffusion, keeps it over --resume, and refuses models it cannot continue."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, catdiff
from helpers.tiny import TINY_LATENT
from synthetic import make_image_folder

from catdiff.io.checkpoints import checkpoint_dirs, read_config, read_weights

# TINY_LATENT without the network flags, which --init replaces.
NETWORK_FLAGS = {"--channels", "--channel-mult", "--attention-levels"}
TINY_RUN = [f for i, f in enumerate(TINY_LATENT) if f not in NETWORK_FLAGS and TINY_LATENT[i - 1] not in NETWORK_FLAGS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of one step on 16 discs at 32 px (4x4 TAESD latents)."""
    root = tmp_path_factory.mktemp("init")
    data = make_image_folder(root / "discs", n=16, size=32)
    result = catdiff("train", str(data), "--out", str(root / "run"), *TINY_LATENT, "--max-steps", "1")
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_init_starts_from_the_models_ema_weights_and_records_it(trained: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "other", n=8, size=32, seed=1)
    run = tmp_path / "tuned"
    flags = [*TINY_RUN, "--max-steps", "1", "--lr", "1e-12", "--warmup", "0"]
    result = catdiff("train", str(data), "--out", str(run), "--init", str(trained), *flags)
    assert result.returncode == 0, result.stderr
    ours, theirs = checkpoint_dirs(run)[-1], checkpoint_dirs(trained)[-1]
    assert read_config(ours)["model"] == read_config(theirs)["model"]
    assert read_config(ours)["diffusion"] == read_config(theirs)["diffusion"]
    assert read_config(ours)["train"]["init"] == str(trained.resolve())
    start, tuned = read_weights(theirs, ema=True), read_weights(ours, ema=False)
    assert all(torch.allclose(tuned[k], start[k], atol=1e-6) for k in start)  # one step at lr 1e-12

    resumed = catdiff("train", str(data), "--out", str(run), *TINY_RUN, "--max-steps", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert read_config(checkpoint_dirs(run)[-1])["train"]["init"] == str(trained.resolve())


def test_init_with_augmentation_starts_its_condition_at_zero(trained: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "other", n=8, size=32, seed=1)
    run = tmp_path / "tuned"
    flags = [*TINY_RUN, "--max-steps", "1", "--augment", "0.5"]
    result = catdiff("train", str(data), "--out", str(run), "--init", str(trained), *flags)
    assert result.returncode == 0, result.stderr
    assert read_config(checkpoint_dirs(run)[-1])["model"]["augment_dim"] == 5


@pytest.mark.parametrize(
    ("model", "flags", "words"),
    [
        ("run", ["--size", "64"], ("makes 4x4x4 samples (32 px)", "--size 32")),
        ("digits", [], ("digits", "another autoencoder")),
        ("pixels", [], ("pixel space",)),
        ("pictures", [], ("not a model",)),
        ("nowhere", [], ("no such model",)),
        ("run", ["--channels", "64"], ("--init takes the network", "--channels")),
    ],
    ids=["other-latent-shape", "other-autoencoder", "pixel-model", "not-a-model", "missing", "network-flag"],
)
def test_init_refuses_a_model_it_cannot_continue(
    trained: Path, model_folder: Path, tmp_path: Path, model: str, flags: list[str], words: tuple[str, ...]
) -> None:
    data = make_image_folder(tmp_path / "other", n=8, size=32, seed=1)
    models = {
        "run": str(trained),
        "digits": "digits",
        "pixels": str(model_folder),  # a denoiser of 8 px RGB images
        "pictures": str(make_image_folder(tmp_path / "pictures", n=2, size=8)),
        "nowhere": str(tmp_path / "nowhere"),
    }
    run = tmp_path / "tuned"
    result = catdiff("train", str(data), "--out", str(run), "--init", models[model], *flags)
    assert_one_line_error(result, *words)
    assert not (run / "latents").exists()  # refused before encoding
