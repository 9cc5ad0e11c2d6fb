"""The bundled cat model: it ships inside the package, loads, and the same seed gives the same cats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from catdiff.io.checkpoints import read_weights
from catdiff.pipeline import Pipeline, pipeline_folder

# The red channel of the images of seeds 0 and 1 at 4 DDIM steps, averaged over 16x16-pixel blocks
# (8x8 per image), recorded when the model was shipped (the second re-recorded when seeds became
# per-image; the first did not move): a changed file, network or sampler moves them.
REFERENCE = Path(__file__).parent / "data" / "bundled_cats_seed0.json"


def test_bundled_weights_are_fp16_and_small() -> None:
    folder = pipeline_folder("cats")
    weights = read_weights(folder / "unet")
    assert {t.dtype for t in weights.values()} == {torch.float16}
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 40 * 10**6, f"{size / 10**6:.1f} MB"  # the bundled-model issue's bound, guide included
    assert {t.dtype for t in read_weights(folder / "guide").values()} == {torch.float16}
    assert (folder / "autoencoder" / "LICENSE").is_file()


def test_bundled_model_makes_128px_images_and_the_same_seed_gives_the_same_images() -> None:
    pipeline = Pipeline.from_folder(pipeline_folder("cats"))
    plain = {"steps": 4, "sampler": "ddim", "precision": "fp32", "condition": pipeline.autoguidance(1)}  # as recorded
    first = pipeline.sample(2, seed=0, **plain)
    assert first.shape == (2, 3, 128, 128)
    assert torch.equal(first, pipeline.sample(2, seed=0, **plain))
    assert not torch.equal(first, pipeline.sample(2, seed=1, **plain))
    blocks = torch.nn.functional.avg_pool2d(first[:, 0], 16).flatten()
    reference = torch.tensor(json.loads(REFERENCE.read_text()))
    assert torch.allclose(blocks, reference, atol=0.02), (blocks - reference).abs().max()


@pytest.mark.slow
def test_bundled_default_sampling_lands_closer_to_the_ode_solution_than_50_ddim_steps() -> None:
    """The bar of the fast-sampling issue on two samples: the shipped sampler, at most 15 network
    evaluations, against 50 DDIM steps on every grid, both measured from 1,000 DDIM steps from the
    same start noise (the full table is bench/steps_to_quality.py's, in docs/PERFORMANCE.md)."""
    pipeline = Pipeline.from_folder(pipeline_folder("cats"))
    assert pipeline.sampling["sampler"] != "heun" and pipeline.sampling["steps"] <= 15  # one evaluation a step
    # The grid is the sampler's choice: measured on the model alone (autoguidance switches on at
    # one noise level, a kink that no step count resolves), in fp32.
    plain = {"condition": pipeline.autoguidance(1), "precision": "fp32"}
    reference = pipeline.sample(2, steps=1000, sampler="ddim", spacing="trailing", seed=0, **plain)

    def distance(**options: str | int) -> float:
        return float((pipeline.sample(2, seed=0, **plain, **options) - reference).pow(2).mean().sqrt())

    ddim_50 = min(distance(steps=50, sampler="ddim", spacing=grid) for grid in ("trailing", "karras", "exponential"))
    assert distance() < ddim_50
