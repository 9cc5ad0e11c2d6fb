"""The SD-1.x text encoder: CLIP's text transformer and its byte-level BPE tokenizer.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(CLIP; the text tower of ViT-L/14: a 12-layer, 768-wide pre-LN transformer with a causal mask,
quick-GELU and learned positions over 77 tokens); Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models" (SD-1.x conditions its U-Net on the final layer's
normalised hidden states, ``[B, 77, 768]``).

Parameter names are those of transformers' ``CLIPTextModel`` without its ``text_model.`` prefix
(``embeddings.token_embedding``, ``encoder.layers.{i}.self_attn.q_proj``, ``final_layer_norm``);
:func:`clip_state_from_transformers` strips that prefix, so a diffusers ``text_encoder/`` folder
and the ``cond_stage_model.transformer.*`` tensors of a CompVis single file load directly.

The tokenizer is OpenAI's byte-level BPE (Sennrich et al. 2016 on the bytes-to-unicode alphabet
of GPT-2) run by Hugging Face's ``tokenizers``, with the vocabulary OpenAI shipped
(``bpe_simple_vocab_16e6.txt.gz``), read from the installed open_clip wheel. Its ids are those
of transformers' ``CLIPTokenizer``: lower-cased, NFC-normalised text, ``<|startoftext|>`` first,
at most 75 text tokens, ``<|endoftext|>`` after them and as padding up to 77.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catdiff.errors import UserError

__all__ = [
    "CLIPTextConfig",
    "CLIPTextEncoder",
    "CLIPTokenizer",
    "clip_state_from_transformers",
    "open_clip_vocabulary",
]

TRANSFORMERS_PREFIX = "text_model."
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"


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


# --- the tokenizer --------------------------------------------------------------------------

VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: OpenAI's CLIP keeps the first 49152 - 256 - 2 merges of the shipped file (whose first line is a header).
MERGES = 49152 - 256 - 2
#: Text split as CLIP does before BPE: special tokens, English contractions, letter runs, single
#: digits, runs of other non-space characters.
PRE_TOKENIZER_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def open_clip_vocabulary() -> Path:
    """OpenAI's BPE vocabulary as shipped in the installed open_clip wheel (found without
    importing open_clip, which would import torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / VOCABULARY_FILE).is_file():
            return Path(folder) / VOCABULARY_FILE
    raise UserError(
        f"CLIP's BPE vocabulary ({VOCABULARY_FILE}) was not found: it comes from open_clip's wheel; "
        "install it without its dependencies: pip install --no-deps open_clip_torch"
    )


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable unicode characters: printable
    Latin-1 bytes map to themselves, the rest to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def read_bpe_vocabulary(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a ``bpe_simple_vocab_16e6.txt.gz`` file, built as OpenAI's CLIP
    builds them: the 256 byte symbols, the same with the end-of-word mark ``</w>``, one symbol
    per merge in rank order, then ``<|startoftext|>`` and ``<|endoftext|>`` (ids 49406, 49407)."""
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise UserError(f"unreadable CLIP vocabulary {path}: {error}") from None
    pairs = [line.split() for line in lines[1 : MERGES + 1]]
    if len(pairs) != MERGES or any(len(pair) != 2 for pair in pairs):
        raise UserError(f"{path} is not CLIP's BPE vocabulary ({MERGES} merges expected)")
    merges = [(first, second) for first, second in pairs]
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START_OF_TEXT, END_OF_TEXT]
    return {token: i for i, token in enumerate(tokens)}, merges


class CLIPTokenizer:
    """Prompts -> token ids ``[B, context_length]``, padded with ``<|endoftext|>`` as SD-1.x does.

    Byte-level BPE with CLIP's vocabulary (Radford et al. 2021), run by the ``tokenizers``
    library: NFC, whitespace runs to one space, lower case; the CLIP split pattern; the byte
    alphabet; BPE with the ``</w>`` end-of-word mark. A prompt longer than ``context_length - 2``
    tokens is cut there, and the end token still closes it.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = 77) -> None:
        from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
        from tokenizers.models import BPE

        bpe = BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=END_OF_TEXT)
        tokenizer = Tokenizer(bpe)
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tokenizer.add_special_tokens([START_OF_TEXT, END_OF_TEXT])
        self.start_id, self.end_id = vocab[START_OF_TEXT], vocab[END_OF_TEXT]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{START_OF_TEXT} $A {END_OF_TEXT}",
            special_tokens=[(START_OF_TEXT, self.start_id), (END_OF_TEXT, self.end_id)],
        )
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(length=context_length, pad_id=self.end_id, pad_token=END_OF_TEXT)
        self.context_length = context_length
        self._tokenizer = tokenizer

    @classmethod
    def from_vocabulary_file(cls, path: Path | None = None, context_length: int = 77) -> CLIPTokenizer:
        """The tokenizer with the vocabulary at ``path``; by default the one of open_clip's wheel."""
        return cls(*read_bpe_vocabulary(path or open_clip_vocabulary()), context_length=context_length)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        encodings = self._tokenizer.encode_batch(list(prompts))
        return torch.tensor([e.ids for e in encodings], dtype=torch.long)
