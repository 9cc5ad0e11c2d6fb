"""Scorers: CLIP from a tiny random model saved in transformers' real format, and typicality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.tiny import save_tiny_clip

from catdiff.errors import UserError
from catdiff.rerank import CLIPScorer, EigenScorer, NeighbourScorer, TypicalityScorer, clip_pixels

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_clip_scorer_is_the_cosine_similarity_transformers_computes(clip_folder: Path) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    images = torch.rand(5, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scorer = CLIPScorer.from_pretrained(clip_folder, prompt="a photo of a cat")
    scores = scorer(images)
    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokens = CLIPTokenizer.from_pretrained(clip_folder)(["a photo of a cat"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        out = model(**tokens, pixel_values=clip_pixels(images, 32, scorer.mean, scorer.std))
    expected = (out.logits_per_image / model.logit_scale.exp()).squeeze(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores.shape == (5,) and bool((scores.abs() <= 1).all())
    other = CLIPScorer.from_pretrained(clip_folder, prompt="a dog")(images)
    assert not torch.allclose(scores, other)


def test_clip_preprocessing_is_close_to_transformers_image_processor() -> None:
    from transformers import CLIPImageProcessor

    coarse = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    image = torch.nn.functional.interpolate(coarse, size=(60, 80), mode="bilinear")  # photo-like, not pixel noise
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pil = (((image[0] + 1) * 127.5).round().byte().permute(1, 2, 0)).numpy()
    theirs = processor(images=pil, return_tensors="pt")["pixel_values"]
    ours = clip_pixels(image, 32, tuple(processor.image_mean), tuple(processor.image_std))
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().mean() < 0.02  # PIL's and torch's bicubic filters differ slightly


def test_clip_scorer_refuses_missing_and_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        CLIPScorer.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="not a CLIP model folder"):
        CLIPScorer.from_pretrained(tmp_path)


def test_typicality_prefers_images_like_the_reference(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(80, 3, 8, 8, generator=g) * 2 - 1, size=64, mode="bilinear")
    scorer = TypicalityScorer.fit(smooth[:60])
    noisy = (torch.rand(20, 3, 64, 64, generator=g) * 2 - 1).clamp(-1, 1)
    typical, atypical = scorer(smooth[60:]), scorer(noisy)
    assert typical.min() > atypical.max()
    again = TypicalityScorer.load(scorer.save(tmp_path).parent)
    torch.testing.assert_close(again(noisy), atypical, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_neighbours_prefer_images_near_the_reference(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(40, 3, 8, 8, generator=g) * 2 - 1, size=128, mode="bilinear")
    scorer = NeighbourScorer.fit(smooth[:30], k=3)
    near = (smooth[30:] + 0.05 * torch.randn(10, 3, 128, 128, generator=g)).clamp(-1, 1)
    far = (torch.rand(10, 3, 128, 128, generator=g) * 2 - 1).clamp(-1, 1)
    assert scorer(smooth[:5]).min() > scorer(far).max()  # a reference image is its own neighbour
    assert scorer(near).mean() > scorer(far).mean()
    again = NeighbourScorer.load(scorer.save(tmp_path).parent)
    torch.testing.assert_close(again(far), scorer(far), rtol=1e-2, atol=1e-2)


def test_eigen_scorer_prefers_images_in_the_principal_subspace(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(120, 3, 4, 4, generator=g) * 2 - 1, size=64, mode="bilinear")
    scorer = EigenScorer.fit(smooth[:100], components=20)
    exaggerated = 3 * (smooth[100:] - smooth[:100].mean(0))  # the same layouts, three times as far out
    assert scorer(smooth[100:]).min() > scorer(exaggerated).max()
    again = EigenScorer.load(scorer.save(tmp_path).parent)
    torch.testing.assert_close(again(exaggerated), scorer(exaggerated), rtol=1e-4, atol=1e-4)
