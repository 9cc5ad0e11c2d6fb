"""Diffusers SD-1.x folders as ``save_pretrained`` writes them: a U-Net saved as ``.bin`` loads,
and the folder's own ``tokenizer/`` is read (ids equal to transformers' ``CLIPTokenizer`` for
each file layout), so txt2img runs without open_clip."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, catdiff
from PIL import Image
from sd_tiny import clip_tokenizer_files, compvis_state, reference_tokenizer, tiny_reference_pipeline, write_single_file

from catdiff.errors import UserError
from catdiff.sd.checkpoint import load_stable_diffusion
from catdiff.sd.pipeline import StableDiffusion
from catdiff.sd.tokenizer import CLIPTokenizer, bytes_to_unicode, read_tokenizer_folder

transformers = pytest.importorskip("transformers")
pytest.importorskip("diffusers")

PROMPTS = [
    "a photo of a cat",
    "",
    "  A   Photo\tof\na CAT  ",
    "(masterpiece:1.2), [cat], <lora:inkpunk:0.7>",
    "café naïve 猫の写真 🐱👍🏽",
    "it's the cat's toy; they'll've gone",
    "<|endoftext|> inside <|startoftext|> the text",
    " ".join(["a fluffy orange cat on a red cushion"] * 12),  # beyond 77 tokens
]
PROMPT = "a photo of a cat, (masterpiece:1.2)"

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_tokenizer_folder(folder: Path) -> Path:
    """A CLIP tokenizer over every byte (alone and word-final) and a few merges, padding with "!",
    saved by transformers itself: a vocabulary that owes nothing to open_clip's file."""
    symbols = list(bytes_to_unicode().values())
    merges = [("c", "a"), ("ca", "t</w>"), ("p", "h"), ("ph", "o"), ("o", "f</w>"), ("a", "t</w>")]
    tokens = [
        *symbols,
        *(s + "</w>" for s in symbols),
        *("".join(m) for m in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def saved_by_transformers(folder: Path) -> Path:
    """OpenAI's vocabulary saved by this transformers' ``save_pretrained`` (``tokenizer.json``)."""
    reference_tokenizer(folder / "files").save_pretrained(folder / "saved")
    return folder / "saved"


@pytest.mark.parametrize(
    "layout",
    [tiny_tokenizer_folder, clip_tokenizer_files, saved_by_transformers],  # the second: as published SD-1.x folders
    ids=["tiny tokenizer.json", "vocab.json + merges.txt", "OpenAI's tokenizer.json"],
)
def test_folder_tokenizer_ids_equal_transformers(tmp_path: Path, layout) -> None:
    folder = layout(tmp_path / "tokenizer")
    theirs = transformers.CLIPTokenizer.from_pretrained(str(folder))
    ours = CLIPTokenizer.from_vocabulary(read_tokenizer_folder(folder))
    ids = ours(PROMPTS)
    for prompt, row in zip(PROMPTS, ids, strict=True):
        assert row.tolist() == theirs(prompt, padding="max_length", max_length=77, truncation=True).input_ids, prompt
    assert ids[1, -1] == theirs.pad_token_id  # the folder's padding token ("!" in the tiny one)


def test_broken_tokenizer_folders_are_one_line_errors(tmp_path: Path) -> None:
    folder = tiny_tokenizer_folder(tmp_path / "tokenizer")
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text('{"a": 0}')
    (folder / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(UserError, match="merge 1 is not two symbols"):
        read_tokenizer_folder(folder)
    (folder / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(UserError, match="'<|startoftext|>' is not in its vocabulary"):
        read_tokenizer_folder(folder)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sd")
    return tiny_reference_pipeline(root), root


def test_unet_saved_as_bin_loads(reference, tmp_path: Path) -> None:
    pipe, root = reference
    from safetensors.torch import load_file

    pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)
    # this transformers writes safetensors whatever the flag; older ones wrote pytorch_model.bin, as here
    text = tmp_path / "bin" / "text_encoder"
    torch.save(load_file(text / "model.safetensors"), text / "pytorch_model.bin")
    (text / "model.safetensors").unlink()
    assert (tmp_path / "bin" / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert not list((tmp_path / "bin").rglob("*.safetensors"))
    from_bin, from_safetensors = load_stable_diffusion(tmp_path / "bin"), load_stable_diffusion(root / "pipe")
    for part in ("unet", "vae", "text_encoder"):
        theirs = getattr(from_safetensors, part).state_dict()
        for key, value in getattr(from_bin, part).state_dict().items():
            assert torch.equal(value, theirs[key]), f"{part}.{key}"


def test_txt2img_on_a_folder_with_its_tokenizer_needs_no_open_clip(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, root = reference
    single_file = write_single_file(tmp_path / "tiny.safetensors", compvis_state(pipe))
    folder = shutil.copytree(root / "pipe", tmp_path / "pipe")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # open_clip (and its vocabulary file) unimportable
    out = tmp_path / "cat.png"
    args = ["--steps", "2", "--width", "16", "--height", "16", "--guidance", "5"]
    # a single file has no tokenizer of its own: it needs open_clip's vocabulary, now out of reach
    assert_one_line_error(catdiff("txt2img", str(single_file), PROMPT, "--out", str(out), *args), "open_clip_torch")
    result = catdiff("txt2img", str(folder), PROMPT, "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (16, 16)

    sd = StableDiffusion.from_checkpoint(folder)
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    torch.testing.assert_close(sd.encode_prompts([PROMPT]), theirs, atol=1e-5, rtol=1e-5)
