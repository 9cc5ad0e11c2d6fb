"""The general (DDPM/ADM) U-Net and the model registry."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from catdiff.errors import UserError
from catdiff.models import SeedUNet, SeedUNetConfig, UNet, UNetConfig, build_model, model_config
from catdiff.models.unet import ResBlock, SelfAttention2d

TINY = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, groups=8, attention_head_dim=8)


def perturbed(model: nn.Module, std: float = 0.05) -> nn.Module:
    """Add noise to every parameter so the zero-initialised convs stop masking the network."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


@pytest.mark.parametrize(
    ("fields", "shape", "out_channels"),
    [
        (TINY, (2, 3, 16, 16), 3),
        ({**TINY, "in_channels": 4, "out_channels": 8, "attention_levels": ()}, (1, 4, 8, 12), 8),
        (
            {
                **TINY,
                "channel_mult": (1, 2, 2),
                "num_res_blocks": 2,
                "conv_resample": False,
                "attention_levels": (0, 2),
                "dropout": 0.1,
            },
            (2, 3, 16, 16),
            3,
        ),
    ],
)
def test_output_shape(fields: dict, shape: tuple, out_channels: int) -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(**fields))
    y = model(torch.randn(shape), torch.rand(shape[0]) * 1000)
    assert y.shape == (shape[0], out_channels, *shape[2:])


def test_default_config_builds_and_runs() -> None:
    model = UNet(UNetConfig())
    n = sum(p.numel() for p in model.parameters())
    assert 15e6 < n < 20e6  # DDPM's CIFAR-10 shape (35.7M there, with 128 base channels)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32), torch.tensor([5.0])).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 3, 20, 20), torch.tensor([5.0]))


def test_structure_attention_levels_and_zero_init() -> None:
    model = UNet(UNetConfig(**{**TINY, "channel_mult": (1, 2, 2), "attention_levels": (1,)}))
    # Level 1: 1 block down + 2 blocks up; plus the bottleneck's one.
    attns = [m for m in model.modules() if isinstance(m, SelfAttention2d)]
    assert len(attns) == 1 + 2 + 1
    assert model.mid_in.attn is not None and model.mid_out.attn is None
    assert {a.num_heads for a in attns} == {4}  # 32 channels / head_dim 8
    for block in (m for m in model.modules() if isinstance(m, ResBlock)):
        assert not block.conv2.weight.any()
    # Zero-initialised output conv: the untrained network predicts exactly zero.
    assert not model(torch.randn(1, 3, 16, 16), torch.tensor([3.0])).any()
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(channel_mult=(1, 2), attention_levels=(2,))


def test_time_embedding_changes_output() -> None:
    model = perturbed(UNet(UNetConfig(**TINY))).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y_a = model(x, torch.tensor([10.0, 10.0]))
        y_b = model(x, torch.tensor([10.5, 10.5]))  # fractional steps count too
        y_c = model(x, torch.tensor([10.0, 900.0]))
    assert not torch.allclose(y_a, y_b)
    torch.testing.assert_close(y_c[0], y_a[0])  # per-sample t: sample 0 unchanged
    assert not torch.allclose(y_c[1], y_a[1])


def test_gradients_flow_to_every_parameter() -> None:
    model = perturbed(UNet(UNetConfig(**TINY)))
    loss = model(torch.randn(2, 3, 16, 16), torch.tensor([1.0, 600.0])).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


SEED_TINY = dict(in_channels=3, out_channels=3, base_channels=8, filters=(8, 16), embed_dim=16, norm_groups=4)


@pytest.mark.parametrize(
    "make",
    [lambda: UNet(UNetConfig(**TINY)), lambda: SeedUNet(SeedUNetConfig(**SEED_TINY))],
    ids=["unet", "seed_unet"],
)
def test_bf16_autocast_and_channels_last(make) -> None:
    torch.manual_seed(0)
    model = perturbed(make()).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 500.0])
    with torch.no_grad():
        y = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_bf16 = model(x, t)
        assert torch.isfinite(y_bf16).all()
        torch.testing.assert_close(y_bf16.float(), y, atol=0.1, rtol=0.1)
        model_cl = model.to(memory_format=torch.channels_last)
        y_cl = model_cl(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(y_cl, y, atol=1e-5, rtol=1e-5)
    # Training step under autocast: backward runs and gives finite gradients.
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, t).float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [
        {"type": "unet", **TINY, "attention_levels": (1,), "dropout": 0.1},
        {
            "type": "seed_unet",
            "in_channels": 3,
            "out_channels": 3,
            "base_channels": 8,
            "filters": (8, 16),
            "embed_dim": 16,
            "norm_groups": 4,
        },
    ],
)
def test_config_round_trip_through_json(config: dict) -> None:
    model = perturbed(build_model(config)).eval()
    stored = json.loads(json.dumps(model_config(model)))
    assert stored["type"] == config["type"]
    rebuilt = build_model(stored).eval()
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert model_config(rebuilt) == model_config(model)
    rebuilt.load_state_dict(model.state_dict())
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([42.0])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, t), model(x, t))


def test_build_model_errors() -> None:
    with pytest.raises(UserError, match="seed_unet, unet"):
        build_model({"type": "transformer"})
    with pytest.raises(UserError, match="choose one of"):
        build_model({"base_channels": 8})
    with pytest.raises(UserError, match="unknown key 'chanel_mult'"):
        build_model({"type": "unet", "chanel_mult": [1, 2]})
    with pytest.raises(UserError, match=r"base_channels: expected a valid integer, got \"8\""):
        build_model({"type": "unet", "base_channels": "8"})
    with pytest.raises(UserError, match="attention_levels"):
        build_model({"type": "unet", "attention_levels": [9]})
    assert isinstance(build_model({"type": "seed_unet"}), SeedUNet)
    assert build_model({"type": "seed_unet"}).config == SeedUNetConfig()
