"""CLIP's byte-level BPE tokenizer, as SD-1.x uses it, and reading its vocabulary file.

Radford et al. 2021 (CLIP) tokenize with OpenAI's byte-level BPE (Sennrich et al. 2016 on the
bytes-to-unicode alphabet of GPT-2), here run by Hugging Face's ``tokenizers``, with the
vocabulary OpenAI shipped (``bpe_simple_vocab_16e6.txt.gz``), read from the installed open_clip
wheel. Its ids are those of transformers' ``CLIPTokenizer``: lower-cased, NFC-normalised text,
``<|startoftext|>`` first, at most 75 text tokens, ``<|endoftext|>`` after them and as padding
up to 77.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from catdiff.errors import UserError

__all__ = ["CLIPTokenizer", "bytes_to_unicode", "open_clip_vocabulary", "read_bpe_vocabulary"]

START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
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
