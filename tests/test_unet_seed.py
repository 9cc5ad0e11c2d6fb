"""Structure and correctness of the seed U-Net (DESIGN.md, "Facts to build on")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catdiff.models import SeedUNet, SeedUNetConfig
from catdiff.models.embeddings import timestep_embedding
from catdiff.models.unet import SelfAttention2d

# Parameter count of the default (latent) seed U-Net; pinned so a change to the architecture
# is a deliberate one.
DEFAULT_PARAMS = 45_538_340

TINY = dict(base_channels=8, filters=(8, 16), embed_dim=16, norm_groups=4)


@pytest.fixture(scope="module")
def seed() -> SeedUNet:
    torch.manual_seed(0)
    return SeedUNet(SeedUNetConfig()).eval()


def test_parameter_count(seed: SeedUNet) -> None:
    n = sum(p.numel() for p in seed.parameters())
    print(f"default seed U-Net: {n:,} parameters")
    assert n == DEFAULT_PARAMS


def test_input_is_latent_plus_tiled_512_embedding(seed: SeedUNet) -> None:
    assert seed.conv_in.in_channels == 4 + 512
    assert seed.conv_in.out_channels == 32
    pixels = SeedUNet(SeedUNetConfig(in_channels=3, out_channels=3))
    assert pixels.conv_in.in_channels == 3 + 512
    assert pixels.conv_out.out_channels == 3


def test_embedding_is_tiled_over_space() -> None:
    model = SeedUNet(SeedUNetConfig(**TINY)).eval()
    seen = {}
    model.conv_in.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3.0, 700.5])
    model(x, t)
    x_in = seen["x"]
    assert x_in.shape == (2, 4 + 16, 16, 16)
    torch.testing.assert_close(x_in[:, :4], x)
    expected = timestep_embedding(t, 16)[:, :, None, None].expand(2, 16, 16, 16)
    torch.testing.assert_close(x_in[:, 4:], expected)


def test_channel_counts_per_level(seed: SeedUNet) -> None:
    filters = (32, 64, 256, 512)
    assert len(seed.down) == len(seed.up) == 4
    for level, f in zip(seed.down, filters, strict=True):
        assert len(level.blocks) == 2
        assert all(b.conv2.out_channels == f for b in level.blocks)
        down = level.resample
        assert isinstance(down, nn.Conv2d) and down.stride == (2, 2) and down.out_channels == f
    # Up path: filters reversed; the first block takes (previous level + skip) channels.
    c_in = [512 + 512, 512 + 256, 256 + 64, 64 + 32]
    for level, f, c in zip(seed.up, reversed(filters), c_in, strict=True):
        assert level.blocks[0].proj.in_channels == c
        assert all(b.conv2.out_channels == f for b in level.blocks)
    assert seed.conv_out.in_channels == 32 and seed.conv_out.out_channels == 4


def test_skips_are_taken_after_the_stride2_conv_and_upsampling_is_bilinear(seed: SeedUNet) -> None:
    ups = [m for m in seed.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 4
    assert all(m.mode == "bilinear" and m.scale_factor == 2.0 for m in ups)

    shapes: dict[str, list] = {"down": [], "up_in": [], "up_out": []}

    def record_down(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        shapes["down"].append(out.shape)

    def record_up(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        shapes["up_in"].append(args[0].shape)
        shapes["up_out"].append(out.shape)

    hooks = [lvl.resample.register_forward_hook(record_down) for lvl in seed.down]
    hooks += [lvl.resample.register_forward_hook(record_up) for lvl in seed.up]
    with torch.no_grad():
        seed(torch.randn(1, 4, 64, 64), torch.tensor([500.0]))
    for h in hooks:
        h.remove()
    assert [s[1:] for s in shapes["down"]] == [(32, 32, 32), (64, 16, 16), (256, 8, 8), (512, 4, 4)]
    # Concatenated skip, then up-sampling: (prev + skip) channels at the skip's size, doubled.
    up_in = [(1024, 4, 4), (768, 8, 8), (320, 16, 16), (96, 32, 32)]
    assert [s[1:] for s in shapes["up_in"]] == up_in
    assert [s[2:] for s in shapes["up_out"]] == [(8, 8), (16, 16), (32, 32), (64, 64)]


def test_exactly_one_attention_at_the_bottleneck(seed: SeedUNet) -> None:
    attns = [m for m in seed.modules() if isinstance(m, SelfAttention2d)]
    assert len(attns) == 1 and attns[0] is seed.mid[1]
    names = [type(m).__name__ for m in seed.mid]
    assert names == ["SeedResBlock", "SelfAttention2d", "SeedResBlock"]
    seen = []
    h = attns[0].register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    with torch.no_grad():
        seed(torch.randn(1, 4, 64, 64), torch.tensor([10.0]))
    h.remove()
    assert seen == [torch.Size([1, 512, 4, 4])]


def test_output_shapes(seed: SeedUNet) -> None:
    with torch.no_grad():
        assert seed(torch.randn(1, 4, 64, 64), torch.tensor([999.5])).shape == (1, 4, 64, 64)
        pixels = SeedUNet(SeedUNetConfig(in_channels=3, out_channels=3)).eval()
        assert pixels(torch.randn(1, 3, 32, 32), torch.tensor([0.0])).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="divisible by 16"):
        seed(torch.randn(1, 4, 24, 24), torch.tensor([1.0]))


def reference_attention(attn: SelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """x + W_o softmax(Q K^T / sqrt(d)) V, written out per head with explicit matrices."""
    B, C, H, W = x.shape
    n = attn.num_heads
    d = C // n
    tokens = F.group_norm(x, attn.norm.num_groups, attn.norm.weight, attn.norm.bias, attn.norm.eps)
    tokens = tokens.reshape(B, C, H * W).transpose(1, 2)  # [B, N, C]
    Wq, Wk, Wv = attn.to_qkv.weight.split(C)
    bq, bk, bv = attn.to_qkv.bias.split(C)
    Q, K, V = tokens @ Wq.T + bq, tokens @ Wk.T + bk, tokens @ Wv.T + bv
    heads = []
    for i in range(n):
        sl = slice(i * d, (i + 1) * d)
        scores = Q[..., sl] @ K[..., sl].transpose(1, 2) / math.sqrt(d)  # [B, N_query, N_key]
        A = torch.softmax(scores, dim=-1)  # each query's weights over the keys sum to 1
        heads.append(A @ V[..., sl])
    out = torch.cat(heads, dim=-1) @ attn.to_out.weight.T + attn.to_out.bias
    return x + out.transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_matches_reference(num_heads: int) -> None:
    torch.manual_seed(0)
    attn = SelfAttention2d(8, num_heads=num_heads, groups=4)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    x = torch.randn(2, 8, 3, 5)  # H != W catches a transposed reshape
    torch.testing.assert_close(attn(x), reference_attention(attn, x), atol=1e-5, rtol=1e-5)
    # The transposed use of the weights (V A instead of A V) gives a different answer.
    with torch.no_grad():
        assert not torch.allclose(attn(x), _transposed_attention(attn, x), atol=1e-3)


def _transposed_attention(attn: SelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    tokens = attn.norm(x).reshape(B, C, H * W).transpose(1, 2)
    Q, K, V = attn.to_qkv(tokens).chunk(3, dim=-1)
    A = torch.softmax(Q @ K.transpose(1, 2) / math.sqrt(C), dim=-1)
    out = attn.to_out(A.transpose(1, 2) @ V)
    return x + out.transpose(1, 2).reshape(B, C, H, W)


def test_time_changes_output_and_gradients_flow() -> None:
    torch.manual_seed(0)
    model = SeedUNet(SeedUNetConfig(**TINY))
    x = torch.randn(2, 4, 16, 16)
    y0 = model(x, torch.tensor([10.0, 10.0]))
    y1 = model(x, torch.tensor([900.0, 900.0]))
    assert not torch.allclose(y0, y1)
    y1.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
