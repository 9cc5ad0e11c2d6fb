"""SD-1.x text side: CLIP's BPE tokenizer against transformers' CLIPTokenizer, and our CLIP
text encoder against transformers' CLIPTextModel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sd_tiny import perturb, reference_tokenizer

from catdiff.errors import UserError
from catdiff.sd.text_encoder import (
    CLIPTextConfig,
    CLIPTextEncoder,
    clip_config_from_state,
    clip_state_from_transformers,
)
from catdiff.sd.tokenizer import CLIPTokenizer, open_clip_vocabulary, read_bpe_vocabulary

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "a photo of a cat",
    "",
    "   ",
    "  A   Photo\tof\na CAT  ",
    "(masterpiece:1.2), [cat], {best quality}, ((sharp focus)), <lora:inkpunk:0.7>",
    "cat:: dog::-0.5 | a b c ... !!! ??? --ar 16:9",
    "café naïve résumé Ångström Ærøskøbing",
    "e\u0301 (combining accent) vs é",
    "🐱 cat emoji 🎉👍🏽 👩‍🚀",
    "猫の写真、東京の夜",
    "고양이 사진",
    "Кошка на диване",
    "it's the cat's toy; they'll've gone, we'd SAID",
    "1234567 3.14159 $100 50%",
    "no\u00a0break\u200bzero width",
    "ﬁne ligature Ⅻ ½",
    "<|endoftext|> inside <|startoftext|> the text",
    "don't STOP!!! 😺😺😺",
    " ".join(["a fluffy orange cat sitting on a red velvet cushion"] * 12),  # far beyond 77 tokens
    "🐱" * 100,  # byte-level tokens beyond 77
]


@pytest.fixture(scope="module")
def tokenizers_pair(tmp_path_factory: pytest.TempPathFactory):
    ours = CLIPTokenizer.from_vocabulary_file()
    theirs = reference_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))
    return ours, theirs


def test_vocabulary_is_clips(tokenizers_pair) -> None:
    vocab, merges = read_bpe_vocabulary(open_clip_vocabulary())
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["cat</w>"] == 2368 and vocab["photo</w>"] == 1125  # ids any SD-1.x prompt dump shows
    ours, _ = tokenizers_pair
    assert ours(["a photo of a cat"])[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_ids_equal_transformers_clip_tokenizer(tokenizers_pair) -> None:
    ours, theirs = tokenizers_pair
    ids = ours(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77) and ids.dtype == torch.long
    for prompt, row in zip(PROMPTS, ids, strict=True):
        expected = theirs(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert row.tolist() == expected, prompt


def test_long_prompts_are_cut_and_closed(tokenizers_pair) -> None:
    ours, _ = tokenizers_pair
    long = ours([PROMPTS[-2]])[0]
    assert long[0] == 49406 and long[-1] == 49407 and (long[1:-1] != 49407).all()  # 75 text tokens
    empty = ours([""])[0]
    assert empty[0] == 49406 and (empty[1:] == 49407).all()  # padded with the end token, as SD-1.x


def test_missing_vocabulary_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps open_clip_torch"):
        open_clip_vocabulary()
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="unreadable CLIP vocabulary"):
        read_bpe_vocabulary(tmp_path / "bad.txt.gz")


@pytest.mark.parametrize("heads", [1, 4])
def test_text_encoder_matches_transformers(heads: int, tokenizers_pair) -> None:
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=heads, hidden_act="quick_gelu"
    )
    ref = perturb(transformers.CLIPTextModel(config), seed=1)
    ours = CLIPTextEncoder(CLIPTextConfig(width=64, layers=3, heads=heads, mlp_width=96)).eval()
    ours.load_state_dict(clip_state_from_transformers(ref.state_dict()), strict=True)
    ids = tokenizers_pair[0](PROMPTS[:6])
    with torch.no_grad():
        expected = ref(ids).last_hidden_state
        torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(ids[:, :20]), ref(ids[:, :20]).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_full_size_text_encoder_is_vit_l14() -> None:
    with torch.device("meta"):
        ref = transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
            )
        ).state_dict()
        ours = CLIPTextEncoder().state_dict()
    mapped = clip_state_from_transformers(ref)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.items()}
    assert len(ours) == 196 and clip_config_from_state(mapped) == CLIPTextConfig()
