"""Bad input and faults, case by case: what ``catdiff`` answers (docs/FAULTS.md's table).

    python bench/fault_table.py > table.md

Each case runs the command line in a fresh process in a scratch folder (a tiny random model
exported as a pipeline, a folder of 8 small images) and prints one row: the case, the exit
code, the lines on stderr, whether a traceback appeared, and the last line. Full-disk cases run
the command under ``RLIMIT_FSIZE`` (writes past the limit fail with EFBIG, as on a full disk).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catdiff.io.checkpoints import write_model_folder
from catdiff.models import build_model, model_config

TINY = {"type": "unet", "in_channels": 3, "out_channels": 3, "base_channels": 16, "channel_mult": [1],
        "attention_levels": [], "groups": 8}  # fmt: skip
LIMITED = (
    "import resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    "from catdiff.cli import main\n"
    "sys.exit(main({args!r}))\n"
)


def run(args: list[str], cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "catdiff", *args]
    if limit is not None:
        command = [sys.executable, "-c", LIMITED.format(limit=limit, args=args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def scratch(root: Path) -> dict[str, Path]:
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(images / f"{i}.png")
    torch.manual_seed(0)
    network = build_model(TINY)
    config = {
        "model": model_config(network),
        "diffusion": {
            "schedule": {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02},
            "prediction": "eps",
        },
        "sample_shape": [3, 8, 8],
    }
    write_model_folder(root / "model", config, network.state_dict())
    assert run(["export", str(root / "model"), "--out", str(root / "pipeline")], root).returncode == 0
    return {"images": images, "pipeline": root / "pipeline"}


def edited_pipeline(root: Path, name: str, change) -> Path:  # type: ignore[no-untyped-def]
    folder = root / f"pipeline-{name}"
    shutil.copytree(root / "pipeline", folder)
    description = json.loads((folder / "pipeline.json").read_text())
    change(description)
    (folder / "pipeline.json").write_text(json.dumps(description))
    return folder


def config_file(root: Path, name: str, content: object) -> Path:
    file = root / f"config-{name}.json"
    file.write_text(json.dumps(content))
    return file


def cases(root: Path, paths: dict[str, Path]) -> list[tuple[str, list[str], int | None]]:
    images, pipeline = str(paths["images"]), str(paths["pipeline"])
    train = ["train", images, "--pixels", "--size", "8", "--batch-size", "4", "--max-steps", "1"]
    configs = {
        "[1]": [1], '{"batch_size": "64"}': {"batch_size": "64"}, '{"batch_size": 2.5}': {"batch_size": 2.5},
        '{"betas": 5}': {"betas": 5}, '{"lr": "0.001"}': {"lr": "0.001"}, '{"schedule": "foo"}': {"schedule": "foo"},
        '{"schedule": {"kind": "foo"}}': {"schedule": {"kind": "foo"}}, '{"lr": null}': {"lr": None},
        '{"batch_size": null}': {"batch_size": None}, '{"prediction": null}': {"prediction": None},
    }  # fmt: skip
    edits = {
        "no diffusion": lambda d: d.pop("diffusion"),
        '"steps": "ten"': lambda d: d["sampling"].update(steps="ten"),
        "steps -5": lambda d: d["sampling"].update(steps=-5),
        "sampler foo": lambda d: d["sampling"].update(sampler="foo"),
        'sample_shape "abc"': lambda d: d.update(sample_shape="abc"),
        "schedule foo": lambda d: d["diffusion"]["schedule"].update(kind="foo"),
    }
    generate = ["generate", "--model", pipeline, "--n", "1"]
    rows: list[tuple[str, list[str], int | None]] = []
    for name, content in configs.items():
        rows.append(
            (
                f"train --config {name}",
                [*train, "--out", "run", "--config", str(config_file(root, str(len(rows)), content))],
                None,
            )
        )
    for name, change in edits.items():
        rows.append(
            (
                f"pipeline.json: {name}",
                [*generate[:2], str(edited_pipeline(root, str(len(rows)), change)), *generate[3:], "--out", "x.png"],
                None,
            )
        )
    rows += [
        ("generate --out x.xyz", [*generate, "--out", "x.xyz"], None),
        ("generate --out a folder", [*generate, "--out", "."], None),
        ("generate --out without extension", [*generate, "--out", "x"], None),
        ("generate --seed 1180591620717411303424", [*generate, "--seed", "1180591620717411303424"], None),
        ("generate --guidance nan (cats)", ["generate", "--n", "1", "--guidance", "nan"], None),
        ("generate --guidance inf (cats)", ["generate", "--n", "1", "--guidance", "inf"], None),
        ("generate --guidance 1e30 (cats)", ["generate", "--n", "1", "--guidance", "1e30"], None),
        ("generate --best-of 5000", [*generate, "--best-of", "5000"], None),
        ("generate over x.png, disk full", [*generate, "--n", "16", "--out", "good.png"], 200),
        ("encode, disk full", ["encode", images, "--out", "cache", "--size", "16"], 1000),
        ("train --resume, disk full", [*train[:-1], "4", "--out", "run-full", "--resume", "--checkpoint-every", "2"], 20000),
    ]  # fmt: skip
    read_only = root / "read-only"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], capture_output=True)
    if mounted.returncode == 0:  # where this machine lets us mount one
        rows += [
            ("generate --out on a read-only file system", [*generate, "--out", str(read_only / "x.png")], None),
            ("export --out on a read-only file system", ["export", pipeline, "--out", str(read_only / "p")], None),
            ("encode --out on a read-only file system", ["encode", images, "--out", str(read_only / "c")], None),
            ("train --out on a read-only file system", [*train, "--out", str(read_only / "r")], None),
        ]
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = scratch(root)
        assert (
            run(["generate", "--model", str(paths["pipeline"]), "--n", "1", "--out", "good.png"], root).returncode == 0
        )
        train = ["train", str(paths["images"]), "--pixels", "--size", "8", "--batch-size", "4", "--out", "run-full"]
        assert run([*train, "--max-steps", "2", "--checkpoint-every", "2"], root).returncode == 0
        print("| case | exit code | stderr lines | traceback | last line |")
        print("|---|---|---|---|---|")
        for name, args, limit in cases(root, paths):
            before = (root / "good.png").read_bytes()
            result = run(args, root, limit)
            lines = result.stderr.strip().splitlines()
            last = (lines[-1] if lines else "").replace(str(root), "…").replace("|", "\\|")
            intact = "" if (root / "good.png").read_bytes() == before else " (good.png CHANGED)"
            traceback = "yes" if "Traceback" in result.stderr else "no"
            print(f"| {name} | {result.returncode} | {len(lines)} | {traceback} | {last[:150]}{intact} |")
        resumed = run([*train, "--resume", "--max-steps", "4", "--checkpoint-every", "2"], root)
        print(f"\nafter the full disk, `train --resume` without the limit: exit {resumed.returncode}")
        print(f"checkpoints: {sorted(p.name for p in (root / 'run-full' / 'checkpoints').iterdir())}")
        subprocess.run(["umount", "-l", str(root / "read-only")], capture_output=True)


if __name__ == "__main__":
    main()
