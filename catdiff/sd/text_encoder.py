"""The SD-1.x text encoder: CLIP's text transformer (its tokenizer is :mod:`catdiff.sd.tokenizer`).

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(CLIP; the text tower of ViT-L/14: a 12-layer, 768-wide pre-LN transformer with a causal mask,
quick-GELU and learned positions over 77 tokens); Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models" (SD-1.x conditions its U-Net on the final layer's
normalised hidden states, ``[B, 77, 768]``).

Parameter names are those of transformers' ``CLIPTextModel`` without its ``text_model.`` prefix
(``embeddings.token_embedding``, ``encoder.layers.{i}.self_attn.q_proj``, ``final_layer_norm``);
:func:`clip_state_from_transformers` strips that prefix, so a diffusers ``text_encoder/`` folder
and the ``cond_stage_model.transformer.*`` tensors of a CompVis single file load directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CLIPTextConfig", "CLIPTextEncoder", "clip_config_from_state", "clip_state_from_transformers"]

TRANSFORMERS_PREFIX = "text_model."


@dataclass(frozen=True)
class CLIPTextConfig:
    """Shape of a :class:`CLIPTextEncoder`; the defaults are SD-1.x's (CLIP ViT-L/14, 123M parameters)."""

    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    context_length: int = 77
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")


def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


class CLIPTextEmbeddings(nn.Module):
    """Token embedding plus a learned absolute position embedding."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.context_length, config.width)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPAttention(nn.Module):
    """Multi-head causal self-attention: each token attends to itself and the tokens before it."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.q_proj = nn.Linear(config.width, config.width)
        self.k_proj = nn.Linear(config.width, config.width)
        self.v_proj = nn.Linear(config.width, config.width)
        self.out_proj = nn.Linear(config.width, config.width)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = (
            proj(x).view(B, N, self.heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(attn.transpose(1, 2).reshape(B, N, C))


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.mlp_width)
        self.fc2 = nn.Linear(config.mlp_width, config.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextEncoder(nn.Module):
    """Token ids ``[B, N]`` (N <= context_length) -> final-layer-normalised hidden states ``[B, N, width]``."""

    def __init__(self, config: CLIPTextConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CLIPTextConfig()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        if input_ids.shape[1] > self.config.context_length:
            raise ValueError(f"at most {self.config.context_length} tokens, got {input_ids.shape[1]}")
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


def clip_state_from_transformers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers ``CLIPTextModel`` state dict (``text_model.*``, or the older unprefixed
    names) -> ours. The ``position_ids`` buffer (``arange(77)``, damaged in some fine-tunes)
    is dropped: positions are computed, not stored."""
    return {
        key.removeprefix(TRANSFORMERS_PREFIX): value
        for key, value in state.items()
        if key.removeprefix(TRANSFORMERS_PREFIX) != "embeddings.position_ids"
    }


def clip_config_from_state(state: Mapping[str, Tensor]) -> CLIPTextConfig:
    """The config of a state dict in our naming, read from its shapes; heads cannot be read
    from weights and are one per 64 channels, as in every CLIP text tower."""
    vocab_size, width = state["embeddings.token_embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    return CLIPTextConfig(
        vocab_size=int(vocab_size),
        width=int(width),
        layers=layers,
        heads=max(1, int(width) // 64),
        mlp_width=int(state["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        context_length=int(state["embeddings.position_embedding.weight"].shape[0]),
    )
