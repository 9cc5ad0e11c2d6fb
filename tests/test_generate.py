"""`catdiff generate`, `catdiff export --fp16` and `catdiff split` through the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, catdiff, catdiff_process
from helpers.tiny import save_tiny_clip
from PIL import Image
from synthetic import make_image_folder

from catdiff.images import to_uint8
from catdiff.io.checkpoints import read_weights
from catdiff.pipeline import DEFAULT_SAMPLING, Pipeline
from catdiff.rerank import EigenScorer


def test_export_fp16_halves_the_weights_and_records_the_sampling_defaults(
    model_folder: Path,
    pipeline_dir: Path,
) -> None:
    weights = read_weights(pipeline_dir / "unet")
    assert {t.dtype for t in weights.values()} == {torch.float16}
    full = read_weights(model_folder)
    assert all(torch.allclose(weights[k].float(), full[k], rtol=1e-3, atol=1e-4) for k in full)
    pipeline = Pipeline.from_folder(pipeline_dir)
    assert pipeline.sampling == {"sampler": "ddpm", "steps": 7, "spacing": DEFAULT_SAMPLING["spacing"]}
    default = pipeline.sample(2, seed=1)  # the recorded sampling is Pipeline.sample's default
    assert torch.equal(default, pipeline.sample(2, seed=1, **pipeline.sampling))
    assert not torch.equal(default, pipeline.sample(2, seed=1, steps=7, sampler="ddim"))
    assert next(pipeline.network.parameters()).dtype == torch.float32


def test_export_output_size_upsamples_the_decoded_images_and_generate_writes_them(
    model_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "big"
    result = catdiff("export", str(model_folder), "--out", str(out), "--output-size", "20")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "pipeline.json").read_text())["output_size"] == 20
    native, big = Pipeline.from_folder(model_folder), Pipeline.from_folder(out)
    images = big.sample(2, seed=1, steps=3)
    assert images.shape == (2, 3, 20, 20) and -1 <= images.min() < images.max() <= 1
    upsampled = torch.nn.functional.interpolate(native.sample(2, seed=1, steps=3), 20, mode="bicubic", antialias=True)
    assert (images - upsampled.clamp(-1, 1)).abs().max() <= 1e-5  # the same samples, made larger as PIL does
    grid = tmp_path / "grid.png"
    result = catdiff("generate", "--model", str(out), "--n", "1", "--steps", "3", "--out", str(grid))
    assert result.returncode == 0, result.stderr
    assert Image.open(grid).size == (20 + 2 * 2, 20 + 2 * 2)
    refused = catdiff(
        "export", str(model_folder), "--out", str(tmp_path / "d"), "--output-size", "20", "--format", "diffusers"
    )
    assert_one_line_error(refused, "--output-size")
    result = catdiff("export", str(out), "--out", str(tmp_path / "d"), "--format", "diffusers")
    assert result.returncode == 0, result.stderr
    assert "left out: the upsampling to 20 px" in result.stdout  # said, not dropped silently


def test_generate_writes_a_grid_and_the_same_seed_gives_the_same_grid(pipeline_dir: Path, tmp_path: Path) -> None:
    grids = []
    for (name, seed), run in zip(
        (("a", "3"), ("b", "3"), ("c", "4")), (catdiff_process, catdiff, catdiff), strict=True
    ):
        out = tmp_path / f"{name}.png"
        result = run("generate", "--model", str(pipeline_dir), "--n", "4", "--seed", seed, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert "ddpm, 7 steps" in result.stdout
        grids.append(torch.from_numpy(np.array(Image.open(out))))
    assert grids[0].shape == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2, 3)  # 2x2 tiles of 8 px, 2 px padding
    assert torch.equal(grids[0], grids[1])
    assert not torch.equal(grids[0], grids[2])


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--n", "0"], ["--n"]),
        (["--steps", "0"], ["--steps"]),
        (["--sampler", "warp-drive"], ["--sampler", "warp-drive"]),
        (["--device", "warp-drive"], ["--device", "warp-drive"]),
    ],
)
def test_bad_generate_options(pipeline_dir: Path, tmp_path: Path, flags: list[str], words: list[str]) -> None:
    out = tmp_path / "x.png"
    assert_one_line_error(catdiff("generate", "--model", str(pipeline_dir), "--out", str(out), *flags), *words)
    assert not out.exists()


def test_generate_refuses_what_is_no_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for name, words in (("missing", "no such model"), ("empty", "not a model"), ("run", "has no checkpoint yet")):
        result = catdiff("generate", "--model", str(tmp_path / name), "--out", str(tmp_path / "x.png"))
        assert_one_line_error(result, words, str(tmp_path / name))
    assert not (tmp_path / "x.png").exists()


def test_generate_samples_a_model_folder_as_sample_does(model_folder: Path, tmp_path: Path) -> None:
    for command in (["generate", "--model"], ["sample"]):
        out = tmp_path / f"{command[0]}.png"
        result = catdiff(*command, str(model_folder), "--n", "2", "--steps", "2", "--seed", "4", "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert png(tmp_path / "generate.png").tobytes() == png(tmp_path / "sample.png").tobytes()


def test_generate_refuses_a_missing_or_read_only_output_folder_before_sampling(
    pipeline_dir: Path, tmp_path: Path
) -> None:
    assert_one_line_error(
        catdiff("generate", "--model", str(pipeline_dir), "--out", str(tmp_path / "nope" / "x.png")), "does not exist"
    )
    # Permission bits do not stop root, so as root use /proc, which no one may create files in.
    read_only = Path("/proc") if os.geteuid() == 0 else tmp_path / "read-only"
    if read_only != Path("/proc"):
        read_only.mkdir()
        read_only.chmod(0o555)
    assert_one_line_error(
        catdiff("generate", "--model", str(pipeline_dir), "--out", str(read_only / "x.png")), "not writable"
    )
    assert_one_line_error(
        catdiff("generate", "--model", str(pipeline_dir), "--out-dir", str(read_only / "images")), "cannot create"
    )


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_generate_out_dir_writes_one_png_per_image_named_by_its_seed(pipeline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "images"
    args = ["generate", "--model", str(pipeline_dir), "--device", "cpu"]
    result = catdiff(*args, "--n", "3", "--seed", "5", "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000005.png", "000006.png", "000007.png"]
    result = catdiff(*args, "--n", "1", "--seed", "7", "--out-dir", str(tmp_path / "one"))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(png(out / "000007.png"), png(tmp_path / "one" / "000007.png"))
    pipeline = Pipeline.from_folder(pipeline_dir)
    for seed in (5, 6):
        assert np.array_equal(png(out / f"{seed:06d}.png"), to_uint8(pipeline.sample(1, seed=seed))[0].numpy())


def test_generate_best_of_out_dir_names_the_kept_candidates_by_their_seeds(pipeline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "best"
    args = ["--n", "2", "--best-of", "5", "--seed", "10", "--out-dir", str(out)]
    result = catdiff("generate", "--model", str(pipeline_dir), *args)
    assert result.returncode == 0, result.stderr
    candidates = Pipeline.from_folder(pipeline_dir).sample(5, seed=10, batch_size=5)
    best = EigenScorer.load(pipeline_dir)(candidates).argsort(descending=True)[:2].tolist()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{10 + i:06d}.png" for i in best)
    for i in best:
        assert np.array_equal(png(out / f"{10 + i:06d}.png"), to_uint8(candidates[i : i + 1])[0].numpy())


def test_generate_refuses_out_with_out_dir_and_an_out_dir_that_is_a_file(pipeline_dir: Path, tmp_path: Path) -> None:
    args = ["generate", "--model", str(pipeline_dir)]
    both = catdiff(*args, "--out", str(tmp_path / "x.png"), "--out-dir", str(tmp_path / "images"))
    assert_one_line_error(both, "--out-dir", "not allowed with")
    assert not (tmp_path / "images").exists()
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_one_line_error(catdiff(*args, "--out-dir", str(a_file)), "cannot create output folder", str(a_file))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_generate_refuses_a_device_this_machine_lacks(pipeline_dir: Path, tmp_path: Path) -> None:
    result = catdiff("generate", "--model", str(pipeline_dir), "--device", "cuda", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result, "--device", "cuda", "not available")


def test_split_holds_out_the_same_files_every_time(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", n=20, size=8)
    for name in ("one", "two"):
        result = catdiff("split", str(data), "--heldout", "5", "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
    heldout = sorted(p.name for p in (tmp_path / "one" / "heldout").iterdir())
    train = sorted(p.name for p in (tmp_path / "one" / "train").iterdir())
    assert len(heldout) == 5 and len(train) == 15 and not set(heldout) & set(train)
    assert heldout == sorted(p.name for p in (tmp_path / "two" / "heldout").iterdir())
    assert all((tmp_path / "one" / "train" / name).resolve().parent == data.resolve() for name in train)
    assert_one_line_error(catdiff("split", str(data), "--heldout", "5", "--out", str(tmp_path / "one")), "already")
    assert_one_line_error(catdiff("split", str(data), "--heldout", "20", "--out", str(tmp_path / "x")), "--heldout")


def test_eval_samples_a_model_and_reports(pipeline_dir: Path, tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", n=12, size=8, seed=0)
    heldout = make_image_folder(tmp_path / "heldout", n=4, size=8, seed=1)
    result = catdiff("eval", str(pipeline_dir), "--train", str(train), "--heldout", str(heldout), "--n", "6")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frechet"] > 0 and 0 <= report["memorised_fraction"] <= 1


@pytest.mark.slow
def test_compiled_pipeline_gives_the_same_images(pipeline_dir: Path) -> None:
    pipeline = Pipeline.from_folder(pipeline_dir)
    eager = pipeline.sample(2, steps=3, seed=1)
    compiled = pipeline.compile().sample(2, steps=3, seed=1)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def scores_printed(stdout: str) -> list[float]:
    line = next(line for line in stdout.splitlines() if "scores of the best" in line)
    return [float(v) for v in line.split(":")[1].split()]


def test_generate_best_of_keeps_the_best_candidates_by_the_default_scorer(pipeline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "best.png"
    result = catdiff("generate", "--model", str(pipeline_dir), "--n", "2", "--best-of", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    scores = scores_printed(result.stdout)
    assert len(scores) == 2 and scores[0] >= scores[1]
    assert np.array(Image.open(out)).shape == (8 + 2 * 2, 2 * 8 + 3 * 2, 3)  # one row of two
    pipeline = Pipeline.from_folder(pipeline_dir)
    candidates = pipeline.sample(5, steps=7, sampler="ddpm", seed=0, batch_size=5)
    all_scores = EigenScorer.load(pipeline_dir)(candidates)
    assert scores == pytest.approx(all_scores.sort(descending=True).values[:2].tolist(), abs=1e-4)
    assert_one_line_error(
        catdiff("generate", "--model", str(pipeline_dir), "--n", "3", "--best-of", "2", "--out", str(out)), "--best-of"
    )


def test_generate_best_of_with_a_local_clip(pipeline_dir: Path, tmp_path: Path) -> None:
    clip = save_tiny_clip(tmp_path / "clip")
    args = ["generate", "--model", str(pipeline_dir), "--n", "1", "--best-of", "3", "--out", str(tmp_path / "c.png")]
    result = catdiff(*args, "--scorer", "clip", "--clip-model", str(clip), "--prompt", "a cat")
    assert result.returncode == 0, result.stderr
    assert len(scores_printed(result.stdout)) == 1
    assert_one_line_error(catdiff(*args, "--scorer", "clip"), "--clip-model")
    assert_one_line_error(catdiff(*args, "--scorer", "clip", "--clip-model", str(tmp_path / "nope")), "not found")


def test_generate_imports_only_what_it_needs(tmp_path: Path) -> None:
    """Start-up: the generate path loads no web server, trainer, metrics or reference library."""
    import subprocess
    import sys

    script = (
        "import sys; from catdiff.cli import main;"
        f" main(['generate', '--n', '1', '--steps', '1', '--out', {str(tmp_path / 'x.png')!r}]);"
        " print(' '.join(sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert loaded.isdisjoint({"fastapi", "uvicorn", "accelerate", "transformers", "diffusers", "torchmetrics"})
