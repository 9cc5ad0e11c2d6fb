"""Autoguidance (Karras et al. 2024): the mix of the two networks, the interval of noise levels,
a pipeline's guide network on disk, a run that keeps its own guide, and the CLI's --guidance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, catdiff, write_tiny_model
from synthetic import TINY_UNET, make_image_folder
from torch import Tensor, nn

from catdiff.diffusion.conditioning import Autoguided
from catdiff.errors import UserError
from catdiff.pipeline import GUIDE_DIR, Pipeline


class Scaled(nn.Module):
    """``factor * x_t + t``, counting its calls."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))
        self.calls = 0

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.factor * x_t + t.view(-1, 1, 1, 1)


X = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_the_guided_output_is_bad_plus_w_times_good_minus_bad() -> None:
    good, bad = Scaled(2.0), Scaled(0.5)
    t = torch.full((3,), 7.0)
    guided = Autoguided(bad, 3.0).guide(good)(X, t)
    expected = bad(X, t) + 3.0 * (good(X, t) - bad(X, t))
    torch.testing.assert_close(guided, expected)
    assert not torch.allclose(guided, good(X, t))


@torch.no_grad()
def test_scale_one_is_the_model_alone() -> None:
    good = Scaled(2.0)
    assert Autoguided(Scaled(0.5), 1.0).guide(good) is good


@torch.no_grad()
def test_outside_the_interval_the_guide_is_not_run_and_the_model_decides() -> None:
    good, bad = Scaled(2.0), Scaled(0.5)
    function = Autoguided(bad, 3.0, t_low=10.0, t_high=20.0).guide(good)
    torch.testing.assert_close(function(X, torch.full((3,), 5.0)), good(X, torch.full((3,), 5.0)))
    assert bad.calls == 0
    mixed_t = torch.tensor([5.0, 15.0, 25.0])
    out = function(X, mixed_t)
    guided = bad(X, mixed_t) + 3.0 * (good(X, mixed_t) - bad(X, mixed_t))
    torch.testing.assert_close(out[1], guided[1])
    torch.testing.assert_close(out[[0, 2]], good(X, mixed_t)[[0, 2]])


@pytest.fixture(scope="module")
def guided_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline folder whose guide is another randomly initialised network of the same shape."""
    root = tmp_path_factory.mktemp("autoguided")
    good = Pipeline.from_folder(write_tiny_model(root / "good", TINY_UNET, [3, 8, 8], prediction="v"))
    torch.manual_seed(1)
    good.guide = Pipeline.from_folder(write_tiny_model(root / "bad", TINY_UNET, [3, 8, 8], prediction="v")).network
    with torch.no_grad():  # a different network from the good one
        for parameter in good.guide.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    good.sampling.update(sampler="dpmpp_2m", steps=4, guidance=2.0, guidance_interval=[0, 3.0])
    return good.save(root / "pipeline", {"diffusion": {"schedule": good.schedule.to_config(), "prediction": "v"},
                                         "sample_shape": [3, 8, 8]}, dtype=torch.float16)  # fmt: skip


def test_a_pipeline_keeps_its_guide_and_samples_with_it_by_default(guided_pipeline: Path) -> None:
    pipeline = Pipeline.from_folder(guided_pipeline)
    assert (guided_pipeline / GUIDE_DIR / "model.safetensors").is_file() and pipeline.guide is not None
    assert pipeline.guidance == 2.0
    default = pipeline.sample(3, seed=5)
    torch.testing.assert_close(default, pipeline.sample(3, seed=5, condition=pipeline.autoguidance(2.0)))
    unguided = pipeline.sample(3, seed=5, condition=pipeline.autoguidance(1.0))
    assert (default - unguided).abs().max() > 1e-3
    pipeline.guide = None
    torch.testing.assert_close(pipeline.sample(3, seed=5), unguided)


def test_image_i_is_that_of_seed_s_plus_i_with_a_guide_too(guided_pipeline: Path) -> None:
    pipeline = Pipeline.from_folder(guided_pipeline)
    torch.testing.assert_close(pipeline.sample(4, seed=2, batch_size=1), pipeline.sample(4, seed=2, batch_size=3))


def test_an_interval_that_holds_no_step_is_no_guidance(guided_pipeline: Path) -> None:
    pipeline = Pipeline.from_folder(guided_pipeline)
    unguided = pipeline.sample(2, seed=1, condition=pipeline.autoguidance(1.0))
    pipeline.sampling["guidance_interval"] = [1e-6, 2e-6]
    torch.testing.assert_close(pipeline.sample(2, seed=1), unguided)


def test_guidance_on_a_model_without_a_guide_or_out_of_range_is_refused(guided_pipeline: Path) -> None:
    pipeline = Pipeline.from_folder(guided_pipeline)
    for bad in (float("nan"), -1.0):
        with pytest.raises(UserError, match="guidance must be between 0 and 30"):
            pipeline.autoguidance(bad)
    pipeline.guide = None
    with pytest.raises(UserError, match="no guide network"):
        pipeline.autoguidance(2.0)


def test_generate_takes_guidance_for_a_model_with_a_guide(guided_pipeline: Path, tmp_path: Path) -> None:
    for guidance in ("1", "3"):
        result = catdiff("generate", "--model", str(guided_pipeline), "--n", "2", "--guidance", guidance,
                         "--out-dir", str(tmp_path / guidance))  # fmt: skip
        assert result.returncode == 0, result.stderr
    one, three = (sorted((tmp_path / g).iterdir())[0].read_bytes() for g in ("1", "3"))
    assert one != three


def test_generate_refuses_guidance_on_an_unconditional_model_without_a_guide(
    pipeline_dir: Path, tmp_path: Path
) -> None:
    result = catdiff("generate", "--model", str(pipeline_dir), "--guidance", "2", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result, "no guide network")


def test_a_run_keeps_its_guide_where_the_recipe_says_and_samples_with_it(tmp_path: Path) -> None:
    """A run with ``guide_at`` writes RUN/guide once, at the step where it gets that far, and the
    run folder then samples autoguided; its export carries the guide."""
    data = make_image_folder(tmp_path / "faces", n=24, size=32)
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"guide_at": 0.5, "guidance": 3, "guidance_interval": [0, 1.0]}))
    run = tmp_path / "run"
    result = catdiff("train", str(data), "--out", str(run), "--config", str(config), "--size", "32", "--no-eval",
                     "--channels", "32", "--channel-mult", "1,2", "--attention-levels", "1", "--batch-size", "4",
                     "--max-steps", "6", "--checkpoint-every", "3", "--preview-every", "0", "--no-channels-last",
                     "--mixed-precision", "no")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "guide" in result.stderr + result.stdout
    pipeline = Pipeline.from_folder(run)
    assert pipeline.guide is not None and pipeline.guidance == 3
    assert pipeline.sampling["guidance_interval"] == [0, 1.0]
    checkpoint = Pipeline.from_folder(run / "checkpoints" / "step-0000003")
    step_3 = {name: p for name, p in checkpoint.network.state_dict().items()}
    assert all(torch.equal(step_3[name], p) for name, p in pipeline.guide.state_dict().items())
    result = catdiff("export", str(run), "--out", str(tmp_path / "exported"))
    assert result.returncode == 0, result.stderr
    assert Pipeline.from_folder(tmp_path / "exported").guide is not None


def test_the_server_samples_autoguided_and_takes_a_guidance_per_request(
    guided_pipeline: Path, pipeline_dir: Path
) -> None:
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from catdiff.images import to_pil
    from catdiff.serve import create_app

    pipeline = Pipeline.from_folder(guided_pipeline)
    client = TestClient(create_app(guided_pipeline, window_s=0.01))
    assert client.get("/api/info").json()["guidance"] == 2.0
    for request, guidance in (({}, 2.0), ({"guidance": 1}, 1.0), ({"guidance": 4.5}, 4.5)):
        body = client.post("/api/generate", json={"seed": 7, **request}).json()
        assert body["guidance"] == guidance
        expected = to_pil(pipeline.sample(1, seed=7, condition=pipeline.autoguidance(guidance)))[0]
        assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).tobytes() == expected.tobytes()
    assert client.post("/api/generate", json={"guidance": 31}).status_code == 422
    unguided = TestClient(create_app(pipeline_dir, window_s=0.01))
    assert unguided.get("/api/info").json()["guidance"] is None
    refused = unguided.post("/api/generate", json={"guidance": 2})
    assert refused.status_code == 422 and "no guide network" in refused.json()["detail"]
