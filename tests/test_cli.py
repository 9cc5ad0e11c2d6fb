"""Bad CLI input gives one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, catdiff
from PIL import Image
from synthetic import make_messy_folder

from catdiff.cli import main
from catdiff.images import to_uint8
from catdiff.pipeline import Pipeline

COMMANDS = ("train", "train-autoencoder", "encode", "split", "sample", "export", "generate", "eval", "serve", "txt2img")
DEVICE_COMMANDS = ("encode", "sample", "generate", "eval", "serve", "txt2img")


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    assert_one_line_error(catdiff("train", str(missing), "--out", str(tmp_path / "run")), str(missing))


def test_training_on_a_messy_folder_skips_and_counts_the_unreadable_files(tmp_path: Path) -> None:
    data = tmp_path / "messy"
    readable, unreadable = make_messy_folder(data)
    run = tmp_path / "run"
    result = catdiff(
        "train", str(data), "--out", str(run), "--pixels", "--size", "8", "--channels", "32", "--channel-mult", "1,2",
        "--batch-size", "4", "--max-steps", "2", "--preview-every", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "could not be read" in line]
    assert len(warnings) == 1
    assert f"skipped {len(unreadable)} of {len(readable) + len(unreadable)} files" in warnings[0]
    assert all(name in warnings[0] for name in unreadable)
    assert (run / "checkpoints" / "step-0000002" / "model.safetensors").is_file()


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    assert_one_line_error(catdiff("train", str(tmp_path), "--out", str(tmp_path / "run")), str(tmp_path))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--steps", "0"], ["--steps"]),
        (["--n", "0"], ["--n"]),
        (["--sampler", "warp-drive"], ["--sampler", "warp-drive"]),
        (["--steps", "many"], ["--steps"]),
        (["--device", "warp-drive"], ["--device", "warp-drive"]),
    ],
)
def test_bad_sample_options(model_folder: Path, tmp_path: Path, flags: list[str], words: list[str]) -> None:
    assert_one_line_error(catdiff("sample", str(model_folder), "--out", str(tmp_path / "x.png"), *flags), *words)


def test_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "model.ckpt"
    bogus.write_bytes(b"\x00not a checkpoint")
    assert_one_line_error(catdiff("sample", str(bogus), "--out", str(tmp_path / "x.png")), str(bogus))


def test_folder_with_corrupt_weights(model_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_folder / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert_one_line_error(catdiff("sample", str(broken), "--out", str(tmp_path / "x.png")), "corrupt")


def test_missing_output_folder_fails_before_sampling(model_folder: Path, tmp_path: Path) -> None:
    assert_one_line_error(catdiff("sample", str(model_folder), "--out", str(tmp_path / "nope" / "x.png")), "nope")


def test_sample_writes_a_grid_and_the_same_seed_gives_the_same_images(model_folder: Path, tmp_path: Path) -> None:
    result = catdiff(
        "sample", str(model_folder), "--n", "4", "--steps", "5", "--seed", "7", "--out", str(tmp_path / "a.png")
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.png").stat().st_size > 0
    pipeline = Pipeline.from_folder(model_folder)
    first = pipeline.sample(3, steps=5, seed=7, sampler="ddpm")
    again = pipeline.sample(3, steps=5, seed=7, sampler="ddpm")
    other = pipeline.sample(3, steps=5, seed=8, sampler="ddpm")
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sample_out_dir_writes_one_png_per_seed(model_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "images"
    args = ["--n", "2", "--steps", "3", "--seed", "4", "--out-dir", str(out), "--device", "cpu"]
    result = catdiff("sample", str(model_folder), *args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000004.png", "000005.png"]
    expected = to_uint8(Pipeline.from_folder(model_folder).sample(1, steps=3, seed=5))[0].numpy()
    assert np.array_equal(np.array(Image.open(out / "000005.png")), expected)


def test_every_subcommand_has_help() -> None:
    for command in ("train", "sample"):
        result = catdiff(command, "--help")
        assert result.returncode == 0 and "usage" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_group_registers_its_commands(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    assert ("--device" in capsys.readouterr().out) == (command in DEVICE_COMMANDS)
