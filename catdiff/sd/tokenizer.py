"""CLIP's byte-level BPE tokenizer, as SD-1.x uses it, and reading its vocabulary files.

Radford et al. 2021 (CLIP) tokenize with OpenAI's byte-level BPE (Sennrich et al. 2016 on the
bytes-to-unicode alphabet of GPT-2), here run by Hugging Face's ``tokenizers``. Its ids are
those of transformers' ``CLIPTokenizer``: lower-cased, NFC-normalised text, ``<|startoftext|>``
first, at most 75 text tokens, ``<|endoftext|>`` after them, and the padding token (SD-1.x's is
``<|endoftext|>``) up to 77.

The vocabulary is a folder's own (a diffusers ``tokenizer/``: transformers' ``vocab.json`` +
``merges.txt``, or the ``tokenizer.json`` of its fast tokenizers, and ``tokenizer_config.json``
for the padding token) or, without one, the vocabulary OpenAI shipped
(``bpe_simple_vocab_16e6.txt.gz``), read from the installed open_clip wheel.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catdiff.errors import UserError
from catdiff.io.json_files import read_json

__all__ = [
    "CLIPTokenizer",
    "Vocabulary",
    "bytes_to_unicode",
    "clip_vocabulary",
    "open_clip_vocabulary",
    "read_bpe_vocabulary",
    "read_tokenizer_folder",
]

START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: OpenAI's CLIP keeps the first 49152 - 256 - 2 merges of the shipped file (whose first line is a header).
MERGES = 49152 - 256 - 2
#: Text split as CLIP does before BPE: special tokens, English contractions, letter runs, single
#: digits, runs of other non-space characters.
PRE_TOKENIZER_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


@dataclass(frozen=True)
class Vocabulary:
    """A CLIP BPE vocabulary: token ids, merges in rank order, and the token that pads prompts."""

    tokens: dict[str, int]
    merges: list[tuple[str, str]]
    pad_token: str = END_OF_TEXT


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


def _read_merges(file: Path) -> list[tuple[str, str]]:
    """The pairs of a ``merges.txt``, one ``first second`` per line after its ``#version`` line."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"unreadable BPE merges {file}: {error}") from None
    pairs = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    bad = next((n for n, pair in enumerate(pairs) if len(pair) != 2), None)
    if bad is not None:
        raise UserError(f"{file}: merge {bad + 1} is not two symbols: {' '.join(pairs[bad])!r}")
    return [(first, second) for first, second in pairs]


def _bpe_model(file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a ``tokenizer.json`` whose model is BPE; merges are written as
    ``[first, second]`` pairs or, by older ``tokenizers``, as ``"first second"`` strings."""
    model = read_json(file, what="tokenizer").get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UserError(f"{file} is not a BPE tokenizer (model type {model.get('type')!r})")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if any(len(m) != 2 for m in merges):
        raise UserError(f"{file}: a merge that is not two symbols")
    return model["vocab"], merges  # type: ignore[return-value]


def _token_content(token: Any) -> str | None:
    """A special token as a config spells it: a string, or an ``AddedToken`` dict's content."""
    return token.get("content") if isinstance(token, dict) else token


def _pad_token(folder: Path) -> str:
    """The padding token of ``tokenizer_config.json`` (or ``special_tokens_map.json``); CLIP's end token without one."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            pad = _token_content(read_json(folder / name, what="tokenizer config").get("pad_token"))
            if isinstance(pad, str):
                return pad
    return END_OF_TEXT


def _has_tokenizer_files(folder: Path) -> bool:
    """Whether ``folder`` holds a transformers CLIP tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``)."""
    return (folder / "tokenizer.json").is_file() or all((folder / n).is_file() for n in ("vocab.json", "merges.txt"))


def read_tokenizer_folder(folder: Path) -> Vocabulary:
    """The vocabulary of a transformers CLIP tokenizer folder. ``tokenizer.json`` comes first,
    as transformers reads it; then ``vocab.json`` + ``merges.txt`` (the published SD-1.x
    folders' files). The start, end and padding tokens must be in the vocabulary."""
    if (folder / "tokenizer.json").is_file():
        tokens, merges = _bpe_model(folder / "tokenizer.json")
    else:
        tokens, merges = read_json(folder / "vocab.json", what="BPE vocabulary"), _read_merges(folder / "merges.txt")
    vocabulary = Vocabulary(tokens, merges, _pad_token(folder))
    missing = [t for t in (START_OF_TEXT, END_OF_TEXT, vocabulary.pad_token) if not isinstance(tokens.get(t), int)]
    if missing:
        raise UserError(f"the tokenizer in {folder} is not CLIP's: {missing[0]!r} is not in its vocabulary")
    return vocabulary


def clip_vocabulary(folder: Path | None = None) -> Vocabulary:
    """The tokenizer files in ``folder`` when it has them (:func:`read_tokenizer_folder`), else
    OpenAI's vocabulary from open_clip's wheel (:func:`open_clip_vocabulary`)."""
    if folder is not None and _has_tokenizer_files(folder):
        return read_tokenizer_folder(folder)
    return Vocabulary(*read_bpe_vocabulary(open_clip_vocabulary()))


class CLIPTokenizer:
    """Prompts -> token ids ``[B, context_length]``, padded as SD-1.x pads them (``<|endoftext|>``).

    Byte-level BPE with CLIP's vocabulary (Radford et al. 2021), run by the ``tokenizers``
    library: NFC, whitespace runs to one space, lower case; the CLIP split pattern; the byte
    alphabet; BPE with the ``</w>`` end-of-word mark. A prompt longer than ``context_length - 2``
    tokens is cut there, and the end token still closes it; shorter ones are padded with
    ``pad_token``.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        context_length: int = 77,
        pad_token: str = END_OF_TEXT,
    ) -> None:
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
        tokenizer.enable_padding(length=context_length, pad_id=vocab[pad_token], pad_token=pad_token)
        self.context_length = context_length
        self._tokenizer = tokenizer

    @classmethod
    def from_vocabulary_file(cls, path: Path | None = None, context_length: int = 77) -> CLIPTokenizer:
        """The tokenizer with the vocabulary at ``path``; by default the one of open_clip's wheel."""
        return cls(*read_bpe_vocabulary(path or open_clip_vocabulary()), context_length=context_length)

    @classmethod
    def from_vocabulary(cls, vocabulary: Vocabulary, context_length: int = 77) -> CLIPTokenizer:
        """The tokenizer of a :class:`Vocabulary` (:func:`clip_vocabulary`)."""
        return cls(vocabulary.tokens, vocabulary.merges, context_length, vocabulary.pad_token)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        encodings = self._tokenizer.encode_batch(list(prompts))
        return torch.tensor([e.ids for e in encodings], dtype=torch.long)
