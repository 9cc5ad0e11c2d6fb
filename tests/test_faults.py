"""Faults and bad input: one line and exit code 2, nothing lost (the cases of docs/FAULTS.md).

Full disks are made without privileges by a child process under ``RLIMIT_FSIZE`` (a write past
the limit fails with EFBIG, as one on a full disk fails with ENOSPC) and, where this machine
lets the tests mount one, by a small tmpfs; read-only folders by a tmpfs remounted read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, catdiff
from synthetic import TINY_UNET, make_image_folder

from catdiff.pipeline import Pipeline

TRAIN = ["--pixels", "--size", "8", "--batch-size", "4", "--preview-every", "0", "--log-every", "1"]
TINY = ["--config", "{config}", "--channels", "16", "--channel-mult", "1", "--attention-levels", ""]


def run_limited(args: list[str], limit: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``catdiff ARGS`` in a child process whose files may grow to ``limit`` bytes at most (EFBIG beyond)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"limit = {limit!r}\n"
        "if limit is not None: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
        "from catdiff.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs at ``tmp_path/disk`` (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill the file system of ``disk`` up to ``leave`` free bytes."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def assert_ends_in_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2, no traceback, and the last line is the error (progress lines may precede it)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("catdiff: error: "), result.stderr
    for word in words:
        assert word in last, last


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


# --- wrong-typed configuration ---------------------------------------------------------------

BAD_CONFIGS = [
    ([1], "not a JSON object"),
    ({"batch_size": "64"}, 'batch_size: expected a valid integer, got "64"'),
    ({"batch_size": 2.5}, "batch_size: expected a valid integer, got 2.5"),
    ({"betas": 5}, "betas: expected a valid array, got 5"),
    ({"lr": "0.001"}, 'lr: expected a valid number, got "0.001"'),
    ({"schedule": "foo"}, 'schedule: expected an object, got "foo"'),
    ({"schedule": {"kind": "foo"}}, "schedule.kind: expected 'linear'"),
    ({"lr": None}, "lr: expected a valid number, got null"),
    ({"batch_size": None}, "batch_size: expected a valid integer, got null"),
    ({"max_steps": True}, "max_steps: expected a valid integer, got true"),
    ({"lr": 1e400}, "lr: expected a finite number"),
    ({"model": {"type": "unet", "base_channels": "32"}}, "base_channels: expected a valid integer"),
    ({"btach_size": 4}, "unknown key 'btach_size'"),
]


@pytest.mark.parametrize(("config", "message"), BAD_CONFIGS, ids=[json.dumps(c)[:30] for c, _ in BAD_CONFIGS])
def test_wrong_typed_configs_are_one_line(tmp_path: Path, config: object, message: str) -> None:
    data = make_image_folder(tmp_path / "data", n=8, size=8)
    file = tmp_path / "config.json"
    file.write_text(json.dumps(config))
    result = catdiff("train", str(data), "--out", str(tmp_path / "run"), "--config", str(file), *TRAIN)
    assert_one_line_error(result, message)
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- a hand-edited pipeline.json ---------------------------------------------------------------


def edited(pipeline_dir: Path, tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "edited"
    shutil.copytree(pipeline_dir, folder)
    description = json.loads((folder / "pipeline.json").read_text())
    change(description)
    (folder / "pipeline.json").write_text(json.dumps(description))
    return folder


PIPELINE_EDITS = {
    "no diffusion": (lambda d: d.pop("diffusion"), "diffusion is required"),
    "steps ten": (lambda d: d["sampling"].update(steps="ten"), 'sampling.steps: expected a valid integer, got "ten"'),
    "steps -5": (lambda d: d["sampling"].update(steps=-5), "sampling.steps: expected greater than or equal to 1"),
    "sampler foo": (lambda d: d["sampling"].update(sampler="foo"), "unknown sampler 'foo'"),
    "shape abc": (lambda d: d.update(sample_shape="abc"), 'sample_shape: expected a valid array, got "abc"'),
    "shape [3, 8, 8, 8]": (lambda d: d.update(sample_shape=[3, 8, 8, 8]), "sample_shape: expected"),
    "shape [4, 8, 8]": (lambda d: d.update(sample_shape=[4, 8, 8]), "does not fit the network's 3 input channels"),
    "schedule foo": (lambda d: d["diffusion"]["schedule"].update(kind="foo"), "diffusion.schedule.kind: expected"),
}


@pytest.mark.parametrize("case", PIPELINE_EDITS)
def test_hand_edited_pipeline_json_is_one_line(pipeline_dir: Path, tmp_path: Path, case: str) -> None:
    change, message = PIPELINE_EDITS[case]
    folder = edited(pipeline_dir, tmp_path, change)
    result = catdiff("generate", "--model", str(folder), "--n", "1", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result, "edited", message)


# --- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "message"),
    [("x.xyz", "unknown image type .xyz"), ("noext", "unknown image type (no extension)"), (".", "is a folder")],
)
def test_bad_output_names_are_refused_before_sampling(pipeline_dir: Path, tmp_path: Path, out: str, message: str):
    began = time.perf_counter()
    result = catdiff(
        "generate", "--model", str(pipeline_dir), "--n", "64", "--steps", "1000", "--out", out, cwd=tmp_path
    )
    assert_one_line_error(result, message)
    assert time.perf_counter() - began < 5  # refused before 64 x 1000 steps of sampling


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "1180591620717411303424"],
        ["--seed", "-1"],
        ["--seed", str(2**63 - 1), "--n", "2"],
        ["--guidance", "nan"],
        ["--guidance", "inf"],
        ["--guidance", "1e30"],
        ["--best-of", "5000"],
    ],
    ids=lambda args: " ".join(args),
)
def test_out_of_range_numbers_are_refused(tmp_path: Path, args: list[str]) -> None:
    result = catdiff("generate", "--n", "1", "--steps", "1", *args, "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result)
    assert not (tmp_path / "x.png").exists()


def test_best_of_in_chunks_equals_ranking_all_at_once(pipeline_dir: Path) -> None:
    """Best-of-N scores its candidates 64 at a time (bounded memory) and keeps the same best ones
    as scoring all of them in one batch: the seeds of the images say which they are."""
    pipeline = Pipeline.from_folder(pipeline_dir)

    def scorer(images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))

    images, scores, indices = pipeline.best_of(150, 5, scorer, seed=3, steps=2)
    everything = pipeline.sample(150, seed=3, steps=2)
    expected = scorer(everything).argsort(descending=True)[:5]
    assert indices.tolist() == expected.tolist()
    torch.testing.assert_close(images, everything[expected])
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)


def test_clip_folder_holding_a_pickle_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"weights": Boom()}, folder / "pytorch_model.bin")
    result = catdiff("generate", "--n", "1", "--best-of", "2", "--scorer", "clip", "--clip-model", str(folder),
                     "--out", str(tmp_path / "x.png"))  # fmt: skip
    assert_one_line_error(result, "cannot load CLIP")
    assert not (tmp_path / "pwned").exists()


# --- full disks and read-only folders --------------------------------------------------------


def test_generate_on_a_full_disk_keeps_the_old_image(pipeline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    assert catdiff("generate", "--model", str(pipeline_dir), "--n", "1", "--out", str(out)).returncode == 0
    before = out.read_bytes()
    result = run_limited(["generate", "--model", str(pipeline_dir), "--n", "64", "--out", str(out)], limit=len(before))
    assert_one_line_error(result, "no space left", str(out))
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_generate_on_a_full_tmpfs_keeps_the_old_image(pipeline_dir: Path, tmpfs: Path) -> None:
    out = tmpfs / "x.png"
    assert catdiff("generate", "--model", str(pipeline_dir), "--n", "1", "--out", str(out)).returncode == 0
    before = out.read_bytes()
    fill(tmpfs, leave=0)
    result = catdiff("generate", "--model", str(pipeline_dir), "--n", "64", "--out", str(out))
    assert_one_line_error(result, "no space left")
    assert out.read_bytes() == before
    assert leftovers(tmpfs) == []


def train_args(data: Path, run: Path, config: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--out", str(run), *TRAIN, *(a.format(config=config) for a in TINY), *extra]


@pytest.fixture
def tiny_training(tmp_path: Path) -> tuple[Path, Path]:
    data = make_image_folder(tmp_path / "data", n=8, size=8)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": {"type": "unet", "groups": 8, "attention_levels": []}, "warmup_steps": 0}))
    return data, config


def test_train_on_a_full_disk_resumes_once_space_is_freed(tiny_training: tuple[Path, Path], tmp_path: Path) -> None:
    data, config = tiny_training
    run = tmp_path / "run"
    first = run_limited(train_args(data, run, config, "--max-steps", "2", "--checkpoint-every", "2"))
    assert first.returncode == 0, first.stderr
    weights = (run / "checkpoints" / "step-0000002" / "model.safetensors").read_bytes()
    full = run_limited(
        train_args(data, run, config, "--resume", "--max-steps", "4", "--checkpoint-every", "2"),
        limit=len(weights) // 2,
    )
    assert_ends_in_error(full, "no space left")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000002"]  # the old one intact, no temporary
    assert (run / "checkpoints" / "step-0000002" / "model.safetensors").read_bytes() == weights
    freed = run_limited(train_args(data, run, config, "--resume", "--max-steps", "4", "--checkpoint-every", "2"))
    assert freed.returncode == 0, freed.stderr
    assert (run / "checkpoints" / "step-0000004").is_dir()
    assert [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())] == [1, 2, 3, 4]


def test_encode_on_a_full_disk_resumes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", n=12, size=16)
    cache = tmp_path / "cache"
    args = ["encode", str(data), "--out", str(cache), "--size", "16", "--shard-size", "4"]
    full = run_limited(args, limit=600)  # cache.json fits, a shard does not
    assert_ends_in_error(full, "no space left")
    assert json.loads((cache / "cache.json").read_text())["count"] == 12
    assert leftovers(cache) == []
    assert run_limited(args).returncode == 0
    whole = tmp_path / "whole"
    assert run_limited([*args[:3], str(whole), *args[4:]]).returncode == 0
    for shard in sorted(whole.glob("shard-*")):
        assert (cache / shard.name).read_bytes() == shard.read_bytes()


@pytest.fixture
def read_only(tmpfs: Path) -> Path:
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    return tmpfs


@pytest.mark.parametrize("command", ["generate", "export", "encode", "train"])
def test_read_only_output_is_one_line(read_only: Path, pipeline_dir: Path, tmp_path: Path, command: str) -> None:
    data = make_image_folder(tmp_path / "data", n=8, size=8)
    args = {
        "generate": ["generate", "--model", str(pipeline_dir), "--n", "1", "--out", str(read_only / "x.png")],
        "export": ["export", str(pipeline_dir), "--out", str(read_only / "p")],
        "encode": ["encode", str(data), "--out", str(read_only / "c"), "--size", "8"],
        "train": ["train", str(data), "--out", str(read_only / "r"), *TRAIN],
    }[command]
    assert_one_line_error(catdiff(*args), str(read_only))


# --- run folders --------------------------------------------------------------------------------


def test_a_second_train_on_one_run_folder_is_refused(tiny_training: tuple[Path, Path], tmp_path: Path) -> None:
    data, config = tiny_training
    run = tmp_path / "run"
    code = f"import sys; from catdiff.cli import main; sys.exit(main({train_args(data, run, config, '--max-steps', '100000')!r}))"
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (run / "log.jsonl").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = catdiff(*train_args(data, run, config, "--max-steps", "2"))
        assert_one_line_error(second, "in use by another catdiff process", f"PID {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The lock of the killed process is taken over.
    resumed = catdiff(*train_args(data, run, config, "--resume", "--max-steps", "2"))
    assert resumed.returncode == 0, resumed.stderr


def test_resume_tolerates_a_cut_log_line_and_stale_temporaries(
    tiny_training: tuple[Path, Path], tmp_path: Path
) -> None:
    data, config = tiny_training
    run = tmp_path / "run"
    assert catdiff(*train_args(data, run, config, "--max-steps", "3", "--checkpoint-every", "2")).returncode == 0
    stale = run / "checkpoints" / ".step-0000004.tmp-999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (run / ".lock").write_text("999999\n")  # left by a process that is gone
    with open(run / "log.jsonl", "a") as log:
        log.write('{"step": 4, "lo')  # a kill mid-write
    result = catdiff(*train_args(data, run, config, "--resume", "--max-steps", "5", "--checkpoint-every", "2"))
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # cut back to the checkpoint of step 2, then continued
    assert not stale.exists()


def test_a_damaged_shard_is_encoded_again(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", n=8, size=16)
    cache = tmp_path / "cache"
    args = ["encode", str(data), "--out", str(cache), "--size", "16", "--shard-size", "4"]
    assert catdiff(*args).returncode == 0
    shard = cache / "shard-00001.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[:-8] + b"\xff" * 8)
    refused = catdiff("train", str(cache), "--out", str(tmp_path / "run"), "--model", "unet", "--max-steps", "1")
    assert_one_line_error(refused, "shard 1 is damaged")
    assert catdiff(*args).returncode == 0
    assert shard.read_bytes() == good


def test_unet_config_of_the_tiny_runs_builds() -> None:
    """The tiny network these tests train (TINY plus the config file's fields) is a valid unet."""
    from catdiff.models import build_model

    build_model({**TINY_UNET, "base_channels": 16, "channel_mult": [1], "attention_levels": [], "groups": 8})
