"""The sampling core's precision: "auto" is bf16 where the hardware computes it natively, for the
denoiser and the decoder alike, and fp32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catdiff import precision
from catdiff.pipeline import Pipeline, pipeline_folder
from catdiff.precision import fast_bf16, resolve_precision


def test_auto_is_bf16_exactly_where_bf16_is_fast() -> None:
    assert resolve_precision("auto") == ("bf16" if fast_bf16() else "fp32")
    assert [resolve_precision(p) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


@pytest.mark.parametrize("fast", [True, False])
def test_sampling_in_auto_is_sampling_in_the_resolved_precision(
    fast: bool, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    monkeypatch.setattr(precision, "fast_bf16", lambda: fast)
    pipeline = Pipeline.from_folder(pipeline_folder("cats"))
    auto = pipeline.sample(2, steps=2, seed=3)
    assert torch.equal(auto, pipeline.sample(2, steps=2, seed=3, precision="bf16" if fast else "fp32"))


def test_the_bf16_decode_is_close_to_the_fp32_one(one_thread: None) -> None:
    """The bundled decoder in bf16 autocast: within 30 dB PSNR of fp32, yet not the same arithmetic."""
    pipeline = Pipeline.from_folder(pipeline_folder("cats"))
    latents = pipeline.sample(2, steps=4, seed=0, precision="fp32")  # images; take their latents back
    latents = pipeline.autoencoder.encode(latents)
    fp32, bf16 = pipeline.decode(latents, "fp32"), pipeline.decode(latents, "bf16")
    assert fp32.dtype == bf16.dtype == torch.float32
    psnr = 10 * torch.log10(4 / (fp32 - bf16).square().mean())
    assert 30 < psnr < 100


def test_txt2img_defaults_to_auto(tmp_path: Path) -> None:
    from catdiff.cli import build_parser

    args = build_parser().parse_args(["txt2img", str(tmp_path), "a cat"])
    assert args.precision == "auto"
    generate = build_parser().parse_args(["generate"])
    assert generate.precision == "auto"
