"""The realism scorer (a real-vs-generated classifier, Azadi et al. 2019) and `catdiff export`
of pipelines with a guide, an interval and that scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, catdiff, make_image_folder

from catdiff.pipeline import Pipeline, load_network, write_network
from catdiff.realism import REALISM_FILE, RealismScorer
from catdiff.rerank import EIGEN_FILE, load_scorer


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Low-frequency colour fields in [-1, 1] at 64 px."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False)


def test_the_scorer_learns_a_difference_and_ranks_by_it(one_thread: None) -> None:
    """Generated = real + speckle: held out of training, the real ones score higher."""
    real = smooth_images(200, seed=0)
    noise = torch.randn(200, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    generated = (smooth_images(200, seed=2) + 0.3 * noise).clamp(-1, 1)
    scorer, fit = RealismScorer.fit(real, generated, epochs=10)
    assert fit.heldout_accuracy > 0.9 and fit.heldout == 40 and fit.trained_on == 360
    fresh_real, fresh_fake = smooth_images(50, seed=3), (smooth_images(50, seed=4) + 0.3 * noise[:50]).clamp(-1, 1)
    assert scorer(fresh_real).min() > scorer(fresh_fake).max()


def test_the_scorer_saves_in_fp16_and_loads_back(tmp_path: Path, one_thread: None) -> None:
    real, generated = smooth_images(30, seed=0), smooth_images(30, seed=1).flip(1)
    scorer, _ = RealismScorer.fit(real, generated, epochs=1)
    scorer.save(tmp_path)
    loaded = load_scorer("realism", pipeline=tmp_path)
    images = smooth_images(8, seed=5)
    assert loaded.name == "realism"
    assert torch.allclose(loaded(images), scorer(images), atol=1e-2, rtol=1e-2)


def test_too_few_images_are_refused() -> None:
    with pytest.raises(Exception, match="at least 20"):
        RealismScorer.fit(smooth_images(5, 0), smooth_images(5, 1))


def test_export_trains_the_realism_scorer_and_generate_ranks_by_it(
    model_folder: Path, tmp_path: Path, one_thread: None
) -> None:
    reference = make_image_folder(tmp_path / "reference", n=40, size=8)
    out = tmp_path / "pipe"
    result = catdiff(
        "export", str(model_folder), "--out", str(out), "--steps", "3", "--reference-images", str(reference),
        "--realism-scorer", "30",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "accuracy on 6 held-out images" in result.stdout
    assert (out / REALISM_FILE).is_file()
    best = catdiff("generate", "--model", str(out), "--n", "2", "--best-of", "6", "--scorer", "realism",
                   "--out", str(tmp_path / "best.png"))  # fmt: skip
    assert best.returncode == 0, best.stderr
    assert "realism scores of the best 2 of 6" in best.stdout


def test_the_realism_scorer_needs_reference_images(model_folder: Path, tmp_path: Path) -> None:
    result = catdiff("export", str(model_folder), "--out", str(tmp_path / "p"), "--realism-scorer", "30")
    assert_one_line_error(result, "--realism-scorer needs --reference-images")
    assert not (tmp_path / "p").exists()


def test_export_of_a_pipeline_adds_a_guide_and_keeps_its_scorers(
    pipeline_dir: Path, model_folder: Path, tmp_path: Path
) -> None:
    """A pipeline folder (as the bundled ones) re-exported with a guide network and an interval."""
    network, _ = load_network(model_folder, ema=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))  # another network of the same shape
    write_network(tmp_path / "guide", network)
    out = tmp_path / "guided"
    result = catdiff(
        "export", str(pipeline_dir), "--out", str(out), "--guide", str(tmp_path / "guide"), "--guidance", "2",
        "--guidance-interval", "0", "0.5", "--fp16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sampling = json.loads((out / "pipeline.json").read_text())["sampling"]
    assert sampling["guidance"] == 2 and sampling["guidance_interval"] == [0, 0.5] and sampling["steps"] == 7
    assert (out / EIGEN_FILE).read_bytes() == (pipeline_dir / EIGEN_FILE).read_bytes()
    pipeline = Pipeline.from_folder(out)
    assert pipeline.guide is not None
    x, inside, outside = torch.randn(2, 3, 8, 8), torch.tensor(0.4), torch.tensor(2.0)
    guided, plain = pipeline.denoiser(pipeline.default_condition()), pipeline.denoiser(pipeline.autoguidance(1))
    assert not torch.allclose(guided(x, inside), plain(x, inside))
    assert torch.equal(guided(x, outside), plain(x, outside))
