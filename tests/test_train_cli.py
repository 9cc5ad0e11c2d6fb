"""`catdiff train` from a folder: recipes by name, the latent default, --time, class subfolders,
and a run folder as a model for `generate` and `serve`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tomllib
import torch
from conftest import assert_one_line_error, catdiff, write_tiny_model
from fastapi.testclient import TestClient
from helpers.digits import make_digits_folder
from helpers.tiny import TINY_CLASS_UNET, TINY_LATENT
from PIL import Image
from synthetic import make_image_folder

from catdiff.cli import build_parser
from catdiff.cli.options import parse_duration
from catdiff.cli.train import (
    AUGMENT_P,
    choose_augmentation,
    choose_speed,
    continue_run,
    default_recipe,
    planned_budget,
    resumed_train_config,
    train_options,
)
from catdiff.data.image_folder import ImageFolder, find_classes, find_images
from catdiff.data.sources import data_kind, folder_classes, latent_size, latent_training_data
from catdiff.errors import UserError
from catdiff.images import to_uint8
from catdiff.io.checkpoints import checkpoint_dirs, read_config, write_model_folder
from catdiff.pipeline import BUNDLED_DIR, Pipeline, pipeline_folder
from catdiff.recipes import (
    BUDGET_RECIPES,
    BUNDLED_CATS,
    DEFAULT_BUDGET,
    DEFAULT_CLASSES,
    DEFAULT_PIXELS,
    RECIPES,
    RECIPES_DIR,
    budget_recipe,
    load_recipe,
)
from catdiff.training import speed
from catdiff.training.augment import AUGMENT_DIM
from catdiff.training.speed import candidates
from catdiff.training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# --- --time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1h0m30s", 3630), ("1.5h", 5400), (" 2H ", 7200)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "words"),
    [("0", "longer than 0"), ("0m", "longer than 0"), ("-5m", "longer than 0"), ("abc", "such as 90s"),
     ("", "such as 90s"), ("5", "give a unit"), ("1m1h", "such as 90s"), ("m", "such as 90s")],
)  # fmt: skip
def test_parse_duration_refuses(text: str, words: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        parse_duration(text)


@pytest.mark.parametrize("flags", [["--time", "0"], ["--time", "abc"], ["--time", "-5m"], ["--time=-5m"]])
def test_bad_time_is_a_one_line_error(tmp_path: Path, flags: list[str]) -> None:
    result = catdiff("train", str(tmp_path), "--out", str(tmp_path / "run"), *flags)
    assert_one_line_error(result, "--time")
    assert not (tmp_path / "run").exists()


def test_time_lifts_the_step_limit_unless_max_steps_is_given(tmp_path: Path) -> None:
    options = train_options(parse("train", str(tmp_path), "--out", "r", "--time", "30m"), BUNDLED_CATS)
    assert options["time_budget"] == 1800 and options["max_steps"] is None
    config = TrainConfig.from_dict({k: v for k, v in options.items() if k not in ("size", "pixels")})
    assert config.time_budget == 1800 and config.max_steps is None
    both = train_options(parse("train", str(tmp_path), "--out", "r", "--time", "1h", "--max-steps", "5"))
    assert both["time_budget"] == 3600 and both["max_steps"] == 5
    assert "time_budget" not in train_options(parse("train", str(tmp_path), "--out", "r"), BUNDLED_CATS)


def test_resume_keeps_the_runs_time_budget_unless_given_again(model_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = {**read_config(model_folder), "train": {"time_budget": 60.0, "max_steps": None}}
    write_model_folder(run / "checkpoints" / "step-0000004", config, {})
    resumed = parse("train", "data", "--out", str(run), "--resume")
    options = {"max_steps": 200_000}
    continue_run(resumed, options, run)
    assert options == {"time_budget": 60.0, "max_steps": None}
    for again in (["--time", "2h"], ["--max-steps", "9"]):
        options = {"max_steps": 200_000}
        continue_run(parse("train", "data", "--out", str(run), "--resume", *again), options, run)
        assert options == {"max_steps": 200_000}  # train_options has put the flags in already


TINY_NET = {
    "type": "unet",
    "in_channels": 4,
    "out_channels": 4,
    "base_channels": 32,
    "channel_mult": [1],
    "attention_levels": [],
}


def test_a_recipes_bf16_becomes_fp32_where_bf16_is_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    for fast, flags, expected in (
        (False, [], "no"),
        (True, [], "bf16"),
        (False, ["--mixed-precision", "bf16"], "bf16"),
    ):
        monkeypatch.setattr(speed, "fast_bf16", lambda fast=fast: fast)
        args = parse("train", "x", "--out", "r", *flags)
        options = {**train_options(args, "cats-128-taesd"), "model": TINY_NET}
        choose_speed(args, options, (4, 4, 4), "cpu", measure=False)
        assert options["mixed_precision"] == expected and options["channels_last"] is False


@pytest.mark.parametrize("fast", [False, True])
def test_auto_takes_the_fastest_setting_measured_here(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    monkeypatch.setattr(speed, "fast_bf16", lambda: fast)
    rates = {("no", False): 10.0, ("no", True): 12.0, ("bf16", False): 30.0, ("bf16", True): 20.0}
    tried = []

    def measured(model, shape, batch, setting, device) -> float:
        tried.append((setting["mixed_precision"], setting["channels_last"]))
        return rates[tried[-1]]

    monkeypatch.setattr(speed, "images_per_second", measured)
    args = parse("train", "x", "--out", "r")
    options = {"model": TINY_NET, "mixed_precision": "auto", "channels_last": "auto", "batch_size": 4}
    choose_speed(args, options, (4, 4, 4), "cpu", measure=False)
    assert set(tried) == (set(rates) if fast else {("no", False), ("no", True)})  # bf16 only where fast
    assert (options["mixed_precision"], options["channels_last"]) == (("bf16", False) if fast else ("no", True))


def test_a_probe_times_real_training_steps() -> None:
    setting = {"mixed_precision": "no", "channels_last": True}
    assert speed.images_per_second(TINY_NET, (4, 8, 8), 2, setting, torch.device("cpu")) > 0


def test_resume_keeps_the_speed_the_run_chose(model_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = {**read_config(model_folder), "train": {"mixed_precision": "bf16", "channels_last": True}}
    write_model_folder(run / "checkpoints" / "step-0000004", config, {})
    options = {"mixed_precision": "auto", "channels_last": "auto"}
    continue_run(parse("train", "data", "--out", str(run), "--resume"), options, run)
    assert options == {"mixed_precision": "bf16", "channels_last": True}
    options = {"mixed_precision": "no", "channels_last": False}
    again = ["--resume", "--mixed-precision", "no", "--no-channels-last"]
    continue_run(parse("train", "data", "--out", str(run), *again), options, run)
    assert options == {"mixed_precision": "no", "channels_last": False}


# --- recipes ------------------------------------------------------------------------------------


def test_every_shipped_recipe_is_a_valid_training_config_and_ships_with_the_package() -> None:
    assert set(RECIPES) == {p.stem for p in RECIPES_DIR.glob("*.json")}
    assert {BUNDLED_CATS, DEFAULT_PIXELS, DEFAULT_CLASSES, *(name for _, name in BUDGET_RECIPES)} <= set(RECIPES)
    for name in RECIPES:
        recipe = load_recipe(name)
        # "auto" is settled at the start of a run: any candidate it may become must be valid
        (speed,) = candidates(recipe.pop("mixed_precision", "no"), recipe.pop("channels_last", False))[:1]
        TrainConfig.from_dict({k: v for k, v in {**recipe, **speed}.items() if k not in ("size", "pixels")})
    assert not (ROOT / "recipes").exists()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "recipes/*.json" in package_data["catdiff"]


def test_the_bundled_cats_recipe_is_the_one_that_made_the_bundled_cats_model() -> None:
    recipe = load_recipe(BUNDLED_CATS)
    bundled = json.loads((BUNDLED_DIR / "cats" / "pipeline.json").read_text())["diffusion"]
    assert recipe["schedule"] == bundled["schedule"] and recipe["prediction"] == bundled["prediction"]
    unet = json.loads((BUNDLED_DIR / "cats" / "unet" / "config.json").read_text())["model"]
    assert all(unet[key] == value for key, value in recipe["model"].items())


def test_recipe_by_name_or_file_and_flags_on_top(tmp_path: Path) -> None:
    by_name = train_options(parse("train", "x", "--out", "r", "--recipe", "digits", "--lr", "0.01"))
    assert by_name == {**load_recipe("digits"), "lr": 0.01}
    file = tmp_path / "mine.json"
    file.write_text(json.dumps({"batch_size": 3, "model": {"type": "unet", "base_channels": 16}}))
    assert train_options(parse("train", "x", "--out", "r", "--config", str(file))) == {
        "batch_size": 3,
        "model": {"type": "unet", "base_channels": 16},
    }


def test_unknown_recipe_lists_the_known_ones(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=8)
    result = catdiff("train", str(data), "--out", str(tmp_path / "run"), "--recipe", "cats-9000")
    assert_one_line_error(result, "unknown recipe 'cats-9000'", *RECIPES)
    both = catdiff("train", str(data), "--out", str(tmp_path / "run"), "--recipe", "digits", "--config", "x.json")
    assert_one_line_error(both, "--config", "not allowed with")


def test_which_recipe_a_folder_trains_with(tmp_path: Path) -> None:
    flat = make_image_folder(tmp_path / "flat", n=8, size=8)
    classes = tmp_path / "classes"
    for name in ("tabby", "black"):
        make_image_folder(classes / name, n=4, size=8)
    digits = make_digits_folder(tmp_path / "digits")

    def chosen(data: Path, *flags: str) -> str | None:
        args = parse("train", str(data), "--out", "r", *flags)
        kind = data_kind(data)
        return default_recipe(args, kind, folder_classes(data) if kind == "images" else None, DEFAULT_BUDGET)

    assert chosen(flat) == budget_recipe(DEFAULT_BUDGET) and chosen(flat, "--pixels") == DEFAULT_PIXELS
    assert chosen(classes) == DEFAULT_CLASSES and chosen(classes, "--pixels") == DEFAULT_PIXELS
    assert chosen(digits) is None and chosen(flat, "--recipe", "digits") is None
    assert default_recipe(parse("train-autoencoder", str(flat), "--out", "r"), "images", None, None) is None


def test_the_budget_chooses_the_recipe_and_none_means_half_an_hour(tmp_path: Path) -> None:
    assert [budget_recipe(s) for s in (90, 20 * 60, 30 * 60, 75 * 60, 2 * 3600, None)] == [
        "folder-10m", "folder-10m", "folder-30m", "folder-30m", "folder-2h", "folder-2h"
    ]  # fmt: skip
    assert DEFAULT_BUDGET == 30 * 60
    assert planned_budget(parse("train", "x", "--out", str(tmp_path)), tmp_path) == DEFAULT_BUDGET
    assert planned_budget(parse("train", "x", "--out", str(tmp_path), "--time", "10m"), tmp_path) == 600
    assert planned_budget(parse("train", "x", "--out", str(tmp_path), "--max-steps", "9"), tmp_path) is None


# --- the latent default ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 20])
def test_too_few_images_is_a_one_line_error_naming_the_folder_and_count(tmp_path: Path, n: int) -> None:
    data = make_image_folder(tmp_path / "few", n=n, size=8)
    result = catdiff("train", str(data), "--out", str(tmp_path / "run"))  # the recipe's batch: 32
    assert_one_line_error(result, str(data), f"holds {n} images", "at least 8" if n < 8 else "one batch of 32")
    assert not (tmp_path / "run" / "latents").exists()


def test_latent_size_must_be_a_multiple_of_8(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=8)
    assert_one_line_error(catdiff("train", str(data), "--out", str(tmp_path / "run"), "--size", "36"), "multiple of 8")


def test_a_folder_trains_in_taesd_latents_cached_in_the_run(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=32)
    run = tmp_path / "run"
    first = catdiff("train", str(data), "--out", str(run), *TINY_LATENT, "--max-steps", "1")
    assert first.returncode == 0, first.stderr
    assert "encoding 8 images" in first.stderr and "none held out" in first.stderr
    config = read_config(checkpoint_dirs(run)[-1])
    assert config["autoencoder"]["type"] == "taesd" and config["sample_shape"] == [4, 4, 4]
    assert config["diffusion"]["prediction"] == "v" and config["train"]["keep_checkpoints"] == 3
    assert config["data"]["latents"] == str(run / "latents") and config["data"]["count"] == 8
    assert (
        config["train"]["max_steps"] == 1
        and config["train"]["schedule"] == load_recipe(budget_recipe(None))["schedule"]
    )


def test_a_complete_latent_cache_is_used_as_it_is_and_a_broken_one_finished(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=16)
    cache = tmp_path / "run" / "latents"
    first = latent_training_data(data, cache, size=16)
    shards = {p: p.stat().st_mtime_ns for p in cache.glob("shard-*")}
    with mock.patch("catdiff.data.sources.encode_data") as encode:
        again = latent_training_data(data, cache, size=16)
    encode.assert_not_called()
    assert torch.equal(again.data, first.data) and torch.equal(again.mirrored, first.mirrored)
    (cache / "stats.json").unlink()  # as if killed while encoding
    assert torch.equal(latent_training_data(data, cache, size=16).data, first.data)
    assert {p: p.stat().st_mtime_ns for p in cache.glob("shard-*")} == shards  # nothing encoded twice
    Image.new("RGB", (16, 16)).save(data / "new.png")
    with pytest.raises(UserError, match="made from other files"):
        latent_training_data(data, cache, size=16)


@pytest.mark.slow
def test_a_folder_run_resumes_and_reruns_on_its_cache_and_generates(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=16, size=32)
    run = tmp_path / "run"
    first = catdiff("train", str(data), "--out", str(run), *TINY_LATENT, "--max-steps", "1")
    assert first.returncode == 0, first.stderr
    shards = {p: p.stat().st_mtime_ns for p in (run / "latents").glob("shard-*")}

    resumed = catdiff("train", str(data), "--out", str(run), *TINY_LATENT, "--max-steps", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "encoding" not in resumed.stderr and "using the taesd latents" in resumed.stderr
    assert [p.name for p in checkpoint_dirs(run)] == ["step-0000001", "step-0000002"]
    # A re-run after a kill during encoding finishes the cache and encodes nothing twice.
    (run / "latents" / "stats.json").unlink()
    shutil.rmtree(run / "checkpoints")
    again = catdiff("train", str(data), "--out", str(run), *TINY_LATENT, "--max-steps", "1")
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in (run / "latents").glob("shard-*")} == shards

    out = tmp_path / "grid.png"
    generated = catdiff("generate", "--model", str(run), "--n", "2", "--steps", "2", "--out", str(out))
    assert generated.returncode == 0, generated.stderr
    assert np.array(Image.open(out)).shape == (2 + 32 + 2, 2 + 2 * (32 + 2), 3)  # 1x2 tiles of 32 px


def test_time_and_max_steps_reach_the_trainer(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=8)
    run = tmp_path / "run"
    result = catdiff(
        "train", str(data), "--out", str(run), "--pixels", "--size", "8", "--channels", "32", "--channel-mult", "1,2",
        "--batch-size", "4", "--preview-every", "0", "--time", "1h", "--max-steps", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    train = read_config(checkpoint_dirs(run)[-1])["train"]
    assert (train["time_budget"], train["max_steps"]) == (3600, 2)
    assert read_config(checkpoint_dirs(run)[-1])["autoencoder"] is None  # --pixels: no latents


# --- class subfolders -----------------------------------------------------------------------------


def test_find_classes_wants_every_image_in_one_of_two_or_more_subfolders(tmp_path: Path) -> None:
    def layout(*files: str) -> list[str] | None:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for file in files:
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / file)
        return find_classes(root, find_images(root))

    assert layout("b/1.png", "a/2.png", "a/deeper/3.png") == ["a", "b"]
    assert layout("a/1.png", "a/2.png") is None  # one class is no classes
    assert layout("a/1.png", "b/2.png", "3.png") is None  # an image outside every subfolder
    assert layout("1.png", "2.png") is None


def test_image_folder_labels_images_by_subfolder(tmp_path: Path) -> None:
    for name, n in (("tabby", 3), ("black", 2)):
        make_image_folder(tmp_path / name, n=n, size=8)
    folder = ImageFolder(tmp_path, 8, class_subfolders=True)
    assert folder.classes == ["black", "tabby"] and folder.labels.tolist() == [0, 0, 1, 1, 1]
    assert ImageFolder(tmp_path, 8).labels is None


@pytest.fixture(scope="module")
def class_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-conditional run on black/ and tabby/, trained one step through the command line."""
    root = tmp_path_factory.mktemp("classes")
    for seed, name in enumerate(("tabby", "black")):
        make_image_folder(root / "cats" / name, n=4, size=32, seed=seed)
    recipe = root / "tiny.json"
    model = {k: v for k, v in TINY_CLASS_UNET.items() if k not in ("num_classes", "sample_size")}
    recipe.write_text(json.dumps({**load_recipe(DEFAULT_CLASSES), "model": model, "mixed_precision": "no"}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args = ["--config", str(recipe), "--size", "32", "--batch-size", "8", "--max-steps", "1", "--preview-every", "0"]
    args.append("--no-eval")
    result = catdiff("train", str(root / "cats"), "--out", str(root / "run"), *args)
    torch.set_num_threads(threads)
    assert result.returncode == 0, result.stderr
    assert "class-conditional on 2 classes: black, tabby" in result.stderr
    return root / "run"


def test_class_subfolders_train_a_class_conditional_model_named_by_them(class_run: Path, tmp_path: Path) -> None:
    config = read_config(checkpoint_dirs(class_run)[-1])
    assert config["model"]["num_classes"] == 2 and config["data"]["classes"] == ["black", "tabby"]
    assert json.loads((class_run / "latents" / "classes.json").read_text())["classes"] == ["black", "tabby"]
    grids = {}
    for label in ("tabby", "1"):  # the classes are sorted: black is 0, tabby 1
        out = tmp_path / f"{label}.png"
        args = ["--n", "1", "--steps", "2", "--class", label, "--guidance", "2", "--out", str(out)]
        result = catdiff("generate", "--model", str(class_run), *args)
        assert result.returncode == 0, result.stderr
        grids[label] = out.read_bytes()
    assert grids["tabby"] == grids["1"]
    unknown = catdiff("generate", "--model", str(class_run), "--class", "tiger", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(unknown, "unknown class 'tiger'", "black, tabby")


def test_an_exported_class_pipeline_keeps_the_names(class_run: Path, tmp_path: Path) -> None:
    assert catdiff("export", str(class_run), "--out", str(tmp_path / "pipe")).returncode == 0
    assert json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["classes"] == ["black", "tabby"]
    sample = catdiff("sample", str(tmp_path / "pipe"), "--class", "tiger", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(sample, "unknown class 'tiger'", "black, tabby")


def test_a_model_without_names_takes_numbers_only(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "class", TINY_CLASS_UNET, [4, 4, 4], "v")
    result = catdiff("generate", "--model", str(model), "--class", "tabby", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result, "--class must be a number", "tabby")


# --- a run folder is a model ----------------------------------------------------------------------


@pytest.fixture
def run_folder(model_folder: Path, tmp_path: Path) -> Path:
    """A run folder whose checkpoints are copies of the tiny model (the newest is step 7)."""
    run = tmp_path / "run"
    for step in (3, 7):
        shutil.copytree(model_folder, run / "checkpoints" / f"step-{step:07d}")
    return run


def test_generate_and_serve_take_a_run_folder(run_folder: Path, model_folder: Path, tmp_path: Path) -> None:
    assert pipeline_folder(run_folder) == run_folder and pipeline_folder("cats") == BUNDLED_DIR / "cats"
    out = tmp_path / "images"
    result = catdiff("generate", "--model", str(run_folder), "--steps", "2", "--n", "1", "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    expected = to_uint8(Pipeline.from_folder(model_folder).sample(1, steps=2))[0]  # its EMA weights, sampling
    assert np.array_equal(np.array(Image.open(out / "000000.png")), expected.numpy())

    from catdiff.serve import create_app

    info = TestClient(create_app(run_folder, window_s=0.01)).get("/api/info").json()
    assert info["scorer"] is None and info["defaults"]["sampler"] == "dpmpp_2m"


def test_best_of_with_a_stored_scorer_on_a_run_folder_says_it_has_no_statistics(
    run_folder: Path, tmp_path: Path
) -> None:
    result = catdiff(
        "generate", "--model", str(run_folder), "--n", "1", "--best-of", "2", "--out", str(tmp_path / "x.png")
    )
    assert_one_line_error(result, "no statistics for --scorer eigen", "--reference-images", "--scorer clip")


@pytest.mark.parametrize(("sides", "size"), [([200, 180], 128), ([64, 64], 64), ([40, 48], 64), ([100, 120], 96)])
def test_the_training_size_comes_from_the_pictures(tmp_path: Path, sides: list[int], size: int) -> None:
    for i, side in enumerate(sides * 3):
        Image.new("RGB", (side + 30, side)).save(tmp_path / f"{i}.png")  # the shorter side counts
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert latent_size(tmp_path) == size


def test_a_default_run_augments_where_it_shows_each_picture_more_than_100_times() -> None:
    def decided(*flags: str, count: int, rate: float = 50.0, budget: float = 600.0) -> dict:
        options = {"model": {"type": "unet"}, "time_budget": budget}
        choose_augmentation(parse("train", "x", "--out", "r", *flags), options, count, rate, default=True)
        return options

    assert "augment" not in decided(count=7888)  # 600 s x 50 img/s: 4 passes
    small = decided(count=200)  # 150 passes
    assert small["augment"] == AUGMENT_P and small["model"]["augment_dim"] == AUGMENT_DIM
    assert decided("--augment", "0", count=200).get("augment") in (None, 0)
    assert "augment" not in decided("--resume", count=200)  # a resumed run keeps what it chose


def test_a_resumed_run_keeps_its_recipe_and_budget(model_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = {**read_config(model_folder), "train": {"recipe": "folder-10m", "time_budget": 600.0}}
    write_model_folder(run / "checkpoints" / "step-0000004", config, {})
    resumed = parse("train", str(tmp_path), "--out", str(run), "--resume")
    assert planned_budget(resumed, run) == 600 and resumed_train_config(resumed, run)["recipe"] == "folder-10m"
    longer = parse("train", str(tmp_path), "--out", str(run), "--resume", "--time", "2h")
    assert planned_budget(longer, run) == 7200 and default_recipe(longer, "images", None, 7200) == "folder-2h"
    assert resumed_train_config(parse("train", "x", "--out", str(run)), run) == {}  # no --resume: a new run
