"""Non-leaking augmentation: the condition says exactly what was done, zero means untouched,
and a network trained with it samples (and exports) as a plain network."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import catdiff
from helpers.tiny import TINY_LATENT
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import make_image_folder

from catdiff.io.checkpoints import checkpoint_dirs, read_config
from catdiff.models import UNet, UNetConfig
from catdiff.pipeline import Pipeline
from catdiff.training.augment import AUGMENT_DIM, augment, reflect


def undo(image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """The image an augmented ``image`` came from, read off its ``condition`` (away from the
    reflected border, which a translation overwrites)."""
    yflip, cos_minus_1, sin, tx, ty = condition.tolist()
    side = image.shape[-1]
    shifted = torch.roll(image, (-round(ty * side), -round(tx * side)), dims=(-2, -1))
    quarters = round(math.atan2(sin, cos_minus_1 + 1) / (math.pi / 2)) % 4
    turned = torch.rot90(shifted, -quarters, dims=(-2, -1))
    return turned.flip(-2) if yflip else turned


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), p=st.sampled_from([0.0, 0.3, 1.0]))
def test_the_condition_says_what_was_done(seed: int, p: float) -> None:
    x = torch.randn(6, 2, 16, 16)
    out, condition = augment(x, p, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape and condition.shape == (6, AUGMENT_DIM)
    limit = 2  # 1/8 of 16
    inner = (slice(None), slice(limit + 1, -limit - 1), slice(limit + 1, -limit - 1))
    for image, original, c in zip(out, x, condition, strict=True):
        if not c.any():
            assert torch.equal(image, original)  # zero: untouched
        assert c[3].abs() <= limit / 16 and c[4].abs() <= limit / 16
        restored = undo(image, c)
        # Rotation and flips are exact; the shift only moves pixels, so the centre comes back whole.
        assert torch.equal(restored[inner], original[inner])
    if p == 0:
        assert not condition.any()


def test_every_draw_is_made_whatever_p_is() -> None:
    generators = [torch.Generator().manual_seed(3) for _ in range(2)]
    augment(torch.randn(4, 1, 8, 8), 0.1, generators[0])
    augment(torch.randn(4, 1, 8, 8), 0.9, generators[1])
    assert torch.equal(torch.rand(5, generator=generators[0]), torch.rand(5, generator=generators[1]))


def test_reflect_mirrors_without_repeating_the_border() -> None:
    assert reflect(torch.arange(-2, 7), 5).tolist() == [2, 1, 0, 1, 2, 3, 4, 3, 2]


def test_a_zero_condition_is_the_plain_network() -> None:
    torch.manual_seed(0)
    config = UNetConfig(in_channels=4, out_channels=4, base_channels=32, channel_mult=(1, 2), augment_dim=AUGMENT_DIM)
    network = UNet(config).eval()
    for p in network.parameters():  # zero-initialised outputs would make any two networks agree
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10.0, 500.0, 900.0])
    plain = network.without_augmentation()
    assert plain.config.augment_dim == 0 and not any("augment" in k for k in plain.state_dict())
    with torch.no_grad():
        expected = network(x, t)
        assert torch.equal(network(x, t, torch.zeros(3, AUGMENT_DIM)), expected)
        assert torch.equal(plain(x, t), expected)
        assert not torch.allclose(network(x, t, torch.ones(3, AUGMENT_DIM)), expected)


def test_a_run_with_augmentation_exports_a_plain_model(tmp_path: Path, one_thread: None) -> None:
    data = make_image_folder(tmp_path / "discs", n=8, size=32)
    run = tmp_path / "run"
    result = catdiff("train", str(data), "--out", str(run), *TINY_LATENT, "--max-steps", "2", "--augment", "0.5")
    assert result.returncode == 0, result.stderr
    checkpoint = checkpoint_dirs(run)[-1]
    assert read_config(checkpoint)["model"]["augment_dim"] == AUGMENT_DIM
    assert read_config(checkpoint)["train"]["augment"] == 0.5
    exported = catdiff("export", str(run), "--out", str(tmp_path / "pipe"))
    assert exported.returncode == 0, exported.stderr
    assert "augment_dim" not in read_config(tmp_path / "pipe" / "unet")["model"] or (
        read_config(tmp_path / "pipe" / "unet")["model"]["augment_dim"] == 0
    )
    ours, theirs = Pipeline.from_folder(run), Pipeline.from_folder(tmp_path / "pipe")
    assert torch.equal(ours.sample(2, steps=2), theirs.sample(2, steps=2))


@pytest.mark.parametrize("p", ["-0.1", "1.5", "often"])
def test_a_bad_probability_is_refused(tmp_path: Path, p: str) -> None:
    result = catdiff("train", str(tmp_path), "--out", str(tmp_path / "run"), "--augment", p)
    assert result.returncode == 2 and "--augment" in result.stderr
