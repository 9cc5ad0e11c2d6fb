"""Latent diffusion: the resumable latent cache, LDM training and self-contained pipeline folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import make_image_folder

from catdiff.autoencoders import Autoencoder, load_autoencoder
from catdiff.data.latent_cache import LatentCache, shard_path
from catdiff.errors import UserError
from catdiff.io.checkpoints import write_model_folder
from catdiff.io.json_files import read_json, write_json
from catdiff.io.vae import load_vae
from catdiff.models.vae import AutoencoderKL, AutoencoderKLConfig
from catdiff.pipeline import Pipeline

SHARDS = 20


def catdiff(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "catdiff", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(catdiff(*args), env=env(), capture_output=True, text=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "discs", n=8 * SHARDS, size=64)


@pytest.fixture(scope="module")
def cache(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("caches") / "full"
    result = run("encode", str(images), "--size", "64", "--shard-size", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def tiny_kl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    module = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_groups=4))
    return Autoencoder(module.eval()).save(tmp_path_factory.mktemp("ae") / "tiny-kl")


def test_cache_holds_latents_mirrors_and_statistics(cache: Path) -> None:
    loaded = LatentCache.open(cache)
    assert loaded.latents.shape == (8 * SHARDS, 4, 8, 8)
    assert loaded.flipped is not None and loaded.flipped.shape == loaded.latents.shape
    assert not torch.equal(loaded.flipped, loaded.latents.flip(-1))  # mirrored pictures, encoded
    assert loaded.stats["std"] == pytest.approx(loaded.latents.std(dim=(0, 2, 3)).tolist(), rel=1e-5)
    taesd = load_autoencoder("taesd")
    assert loaded.manifest["autoencoder"] == taesd.descriptor()


@pytest.mark.slow
def test_killed_encoder_resumes_without_redoing_shards(images: Path, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ("encode", str(images), "--size", "64", "--shard-size", "8", "--batch-size", "8", "--out", str(out))
    process = subprocess.Popen(catdiff(*args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not shard_path(out, 2).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the encoder finished before it could be killed"
    done = {p: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    assert 3 <= len(done) < SHARDS

    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} of {SHARDS} shards already encoded" in result.stderr
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())
    assert not list(out.glob("*.tmp-*"))
    for index in range(SHARDS):
        resumed, full = load_file(shard_path(out, index)), load_file(shard_path(cache, index))
        assert all(torch.equal(resumed[k], full[k]) for k in full)


def test_cache_from_another_autoencoder_or_size_is_refused(
    images: Path, cache: Path, tiny_kl: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    other_size = run("encode", str(images), "--size", "32", "--shard-size", "8", "--out", str(copy))
    assert other_size.returncode == 2 and "made at size 64 px, not 32 px" in other_size.stderr
    other_ae = run(
        "encode", str(images), "--size", "64", "--shard-size", "8", "--autoencoder", str(tiny_kl), "--out", str(copy)
    )
    assert other_ae.returncode == 2 and "was made with autoencoder" in other_ae.stderr
    train = run("train", str(cache), "--out", str(tmp_path / "run"), "--autoencoder", str(tiny_kl), "--max-steps", "1")
    assert train.returncode == 2 and "was made with autoencoder" in train.stderr
    train = run("train", str(cache), "--out", str(tmp_path / "run"), "--size", "128", "--max-steps", "1")
    assert train.returncode == 2 and "made at size 64 px, not 128 px" in train.stderr


@pytest.mark.slow
def test_ldm_trains_on_the_cache_and_exports_a_self_contained_pipeline(
    images: Path, tiny_kl: Path, tmp_path: Path
) -> None:
    autoencoder = tmp_path / "ae"
    shutil.copytree(tiny_kl, autoencoder)
    latents = tmp_path / "latents"
    assert (
        run("encode", str(images), "--size", "64", "--autoencoder", str(autoencoder), "--out", str(latents)).returncode
        == 0
    )
    run_dir = tmp_path / "run"
    result = run(
        "train", str(latents), "--out", str(run_dir), "--channels", "32", "--channel-mult", "1",
        "--attention-levels", "0", "--batch-size", "8", "--max-steps", "2", "--preview-every", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (run_dir / "previews" / "step-0000002.png").is_file()
    direct = Pipeline.from_folder(run_dir).sample(2, steps=3, seed=1)
    assert direct.shape == (2, 3, 64, 64)

    pipeline_dir = tmp_path / "pipeline"
    assert run("export", str(run_dir), "--out", str(pipeline_dir)).returncode == 0
    shutil.rmtree(autoencoder)  # the pipeline folder must not need anything outside it
    shutil.rmtree(run_dir)
    assert {p.name for p in pipeline_dir.iterdir()} == {"pipeline.json", "unet", "autoencoder"}
    exported = Pipeline.from_folder(pipeline_dir).sample(2, steps=3, seed=1)
    assert torch.equal(exported, direct)


def test_json_files_are_written_atomically_and_bad_ones_refused_in_one_line(tmp_path: Path) -> None:
    file = write_json(tmp_path / "cache.json", {"format": "catdiff.latents/1", "count": 3})
    assert read_json(file, format="catdiff.latents/1", what="latent cache") == {
        "format": "catdiff.latents/1",
        "count": 3,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary file left behind
    for text, words in (("{", "unreadable latent cache"), ("[1]", "not a JSON object"), ("{}", "not a catdiff latent")):
        file.write_text(text)
        with pytest.raises(UserError, match=words) as caught:
            read_json(file, format="catdiff.latents/1", what="latent cache")
        assert "\n" not in str(caught.value) and str(file) in str(caught.value)


def test_autoencoders_share_one_float32_latent_interface(tiny_kl: Path, tmp_path: Path) -> None:
    taesd, kl = load_autoencoder("taesd"), load_autoencoder(tiny_kl)
    assert (taesd.kind, kl.kind) == ("taesd", "autoencoder_kl")
    assert kl.descriptor() == Autoencoder(load_vae(tiny_kl)).descriptor()
    write_model_folder(tmp_path / "unet", {"model": {"type": "unet"}}, {"x": torch.zeros(1)})
    with pytest.raises(UserError, match="holds a 'unet' model, not an AutoencoderKL"):
        load_autoencoder(tmp_path / "unet")
    half = Autoencoder(load_vae(tiny_kl, dtype=torch.bfloat16))
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        for autoencoder in (taesd, kl, half):
            latents = autoencoder.encode(images)
            assert latents.dtype == torch.float32 and latents.shape == (1, 4, 2, 2)
            assert autoencoder.decode(latents.half()).dtype == torch.float32
        torch.testing.assert_close(half.encode(images), kl.encode(images), atol=0.05, rtol=0.05)
