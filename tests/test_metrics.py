"""Metrics: Fréchet distance / KID plumbing (torchmetrics) and the memorisation check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, catdiff
from synthetic import make_image_folder
from torch import nn

from catdiff.errors import UserError
from catdiff.images import to_pil
from catdiff.metrics import (
    FrechetToReference,
    TAESDFeatures,
    evaluate,
    feature_distances,
    memorisation,
    nearest_distances,
)


class TinyFeatures(nn.Module):
    """A tiny random feature extractor standing in for Inception: the plumbing is the same."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def images(n: int, *, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 1.6 - 0.8 + shift).clamp(-1, 1)


def test_frechet_distance_is_small_for_one_distribution_and_grows_with_a_shift() -> None:
    features = TinyFeatures()
    real = images(200, seed=0)
    same = feature_distances(real, images(200, seed=1), features)
    near = feature_distances(real, images(200, shift=0.1, seed=1), features)
    far = feature_distances(real, images(200, shift=0.4, seed=1), features)
    assert same.frechet < near.frechet < far.frechet
    assert abs(same.kid_mean) < near.kid_mean < far.kid_mean
    assert same.kid_std is not None and same.kid_std >= 0


def test_frechet_distance_matches_the_closed_form_for_gaussian_features() -> None:
    # Identity features on 1x1x3 "images": FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2).
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 0.5, 2.0])
    b = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 1.0, 1.0]) + torch.tensor([0.5, 0.0, 0.0])
    found = feature_distances(a.view(-1, 3, 1, 1), b.view(-1, 3, 1, 1), nn.Flatten(), kid=False).frechet
    s1, s2 = torch.tensor([1.0, 0.25, 4.0]), torch.ones(3)
    expected = 0.25 + float((s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    assert found == pytest.approx(expected, abs=0.15)


def test_frechet_to_reference_measures_each_set_alone_against_the_kept_real_features() -> None:
    features, real = TinyFeatures(), images(100, seed=0)
    frechet = FrechetToReference(real, features)
    near, far = images(50, shift=0.1, seed=1), images(50, shift=0.4, seed=2)
    first = frechet(near)
    assert frechet(far) == pytest.approx(feature_distances(real, far, features, kid=False).frechet, rel=1e-5)
    assert frechet(near) == pytest.approx(first, rel=1e-6)  # the previous set is forgotten, the real one kept
    assert first < frechet(far)
    with pytest.raises(UserError, match="at least 2"):
        frechet(near[:1])


@pytest.mark.slow
def test_taesd_features_shape_and_that_they_separate_blur_from_sharp_images() -> None:
    features = TAESDFeatures()
    sharp = images(64, seed=0)
    out = features(sharp)
    assert out.shape == (64, 256)
    blurred = torch.nn.functional.avg_pool2d(sharp, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert feature_distances(sharp, images(64, seed=1), features, kid=False).frechet < (
        feature_distances(sharp, blurred, features, kid=False).frechet
    )


def test_nearest_distances_against_brute_force() -> None:
    q, r = images(7, seed=3), images(11, seed=4)
    brute = torch.tensor([min(float((a.double() - b.double()).norm()) for b in r) for a in q], dtype=torch.float64)
    assert torch.allclose(nearest_distances(q, r), brute)


def test_memorisation_flags_copies_of_training_images_and_not_new_ones() -> None:
    train, heldout = images(100, seed=0), images(30, seed=1)
    copies = train[:10] + 0.01 * torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    fresh = images(10, seed=5)
    found = memorisation(torch.cat([copies, fresh]), train, heldout, size=16)
    assert found.fraction_closer == pytest.approx(0.5)
    assert memorisation(fresh, train, heldout, size=16).fraction_closer == 0.0
    assert memorisation(fresh, train, heldout, size=16).median_ratio == pytest.approx(1.0, abs=0.1)


def test_evaluate_reports_distances_and_memorisation() -> None:
    report = evaluate(images(40, seed=1), images(60, seed=0), images(20, seed=2), features=TinyFeatures(), kid=True)
    assert set(report) >= {"frechet", "kid_mean", "memorised_fraction", "nearest_median_ratio"}


def test_eval_cli_on_a_folder_of_samples(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", n=40, size=16, seed=0)
    heldout = make_image_folder(tmp_path / "heldout", n=10, size=16, seed=1)
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, image in enumerate(to_pil(images(12, seed=9))):
        image.save(samples / f"{i}.png")
    out = tmp_path / "report.json"
    result = catdiff("eval", str(samples), "--train", str(train), "--heldout", str(heldout), "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["features"] == "taesd" and report["frechet"] > 0 and 0 <= report["memorised_fraction"] <= 1


def test_eval_without_inception_weights_says_so(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", n=8, size=16)
    missing = tmp_path / "pt_inception.pth"
    result = catdiff("eval", str(train), "--train", str(train), "--inception", str(missing))
    assert_one_line_error(result, "Inception weights not found", str(missing))
