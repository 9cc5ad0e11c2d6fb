"""The CLIP scorer on open_clip folders, converted into transformers' CLIPModel: the same image
and text embeddings as open_clip's own model loaded from the same files, with no open_clip import
in catdiff; configs that are not plain CLIP, and broken folders, are one-line errors.

The reference is open_clip itself (``open_clip.create_model("local-dir:...")``), imported with
stand-ins for torchvision, which its package imports but its model code does not use, and for
ftfy when that is missing (its ``fix_text`` leaves the plain prompts below unchanged).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, catdiff
from sd_tiny import clip_tokenizer_files, imported_with_stand_ins, perturb

from catdiff.errors import UserError
from catdiff.rerank import CLIPScorer, clip_pixels
from catdiff.sd.tokenizer import CLIPTokenizer, clip_vocabulary

pytest.importorskip("transformers")
if importlib.util.find_spec("open_clip") is None:
    pytest.skip("open_clip_torch (installed with --no-deps) is the reference", allow_module_level=True)

PROMPTS = ["a photo of a cat", "two dogs playing in the snow", "", "A PAINTING of a ginger cat, oil on canvas"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
TOL = 1e-5


def tiny_model_cfg(quick_gelu: bool, image_size: int | list[int] = 32) -> dict:
    return {
        "embed_dim": 24,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


@pytest.fixture(scope="module")
def open_clip():
    with imported_with_stand_ins("open_clip", {"torchvision": {}, "ftfy": {"fix_text": lambda text: text}}) as module:
        yield module


def save_open_clip_folder(open_clip, folder: Path, model_cfg: dict, weights: str) -> Path:
    """A random open_clip CLIP (noise on every parameter) in open_clip's on-disk layout: its own
    ``save_config_for_hf`` for ``open_clip_config.json``, the state dict under its weights names."""
    from safetensors.torch import save_file

    from catdiff.io.open_clip_keys import OPEN_CLIP_WEIGHTS

    torch.manual_seed(0)
    model = perturb(open_clip.model.CLIP(**model_cfg), seed=1)
    model.visual.image_mean, model.visual.image_std = MEAN, STD  # what open_clip.create_model sets
    folder.mkdir(parents=True)
    hub = importlib.import_module("open_clip.push_to_hf_hub")  # (the package's name of it is a function)
    hub.save_config_for_hf(model, folder / "open_clip_config.json", model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert weights in OPEN_CLIP_WEIGHTS
    save_file(state, folder / weights) if weights.endswith(".safetensors") else torch.save(state, folder / weights)
    return folder


@pytest.mark.parametrize(
    ("quick_gelu", "weights", "image_size"),
    [(True, "open_clip_model.safetensors", 32), (False, "open_clip_pytorch_model.bin", [32, 32])],
    ids=["quick-gelu-safetensors", "gelu-bin"],
)
def test_embeddings_equal_open_clips(open_clip, tmp_path: Path, quick_gelu: bool, weights: str, image_size) -> None:
    folder = save_open_clip_folder(open_clip, tmp_path / "clip", tiny_model_cfg(quick_gelu, image_size), weights)
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    reference_tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    scorer = CLIPScorer.from_pretrained(folder, prompt=PROMPTS[0])
    assert (scorer.mean, scorer.std, scorer.image_size) == (MEAN, STD, 32)

    images = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    pixels = clip_pixels(images, 32, MEAN, STD)
    tokenizer = CLIPTokenizer.from_vocabulary(clip_vocabulary())
    with torch.no_grad():
        theirs_image = reference.encode_image(pixels)
        theirs_text = reference.encode_text(reference_tokenizer(PROMPTS))
        ours_image = scorer.encode_image(pixels)
        ours_text = scorer.encode_image.model.get_text_features(input_ids=tokenizer(PROMPTS))
        ours_text = getattr(ours_text, "pooler_output", ours_text)
    torch.testing.assert_close(ours_image, theirs_image, atol=TOL, rtol=0)
    torch.testing.assert_close(ours_text, theirs_text, atol=TOL, rtol=0)
    torch.testing.assert_close(scorer.text_embedding[0], F.normalize(theirs_text[0], dim=-1), atol=TOL, rtol=0)
    expected = F.normalize(theirs_image, dim=-1) @ F.normalize(theirs_text[0], dim=-1)
    torch.testing.assert_close(scorer(images), expected, atol=TOL, rtol=0)
    assert theirs_image.std() > 0.1 and theirs_text.std() > 0.1  # not a degenerate model that any map would fit


def test_folder_tokenizer_is_used_and_open_clip_is_not_imported(
    open_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_open_clip_folder(open_clip, tmp_path / "clip", tiny_model_cfg(True), "open_clip_model.safetensors")
    with torch.no_grad():
        expected = F.normalize(
            open_clip.create_model(f"local-dir:{folder}").encode_text(open_clip.tokenize(PROMPTS[1]))
        )
    tokenizer_files = clip_tokenizer_files(tmp_path / "tokenizer")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(UserError, match="open_clip_torch"):  # no tokenizer files: OpenAI's vocabulary is needed
        CLIPScorer.from_pretrained(folder, prompt=PROMPTS[1])
    for name in ("vocab.json", "merges.txt"):  # beside the weights, as on the Hub
        shutil.copy(tokenizer_files / name, folder / name)
    scorer = CLIPScorer.from_pretrained(folder, prompt=PROMPTS[1])
    torch.testing.assert_close(scorer.text_embedding, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"vision_cfg": {"timm_model_name": "vit_base_patch16_224"}}, "vision_cfg.timm_model_name"),
        ({"vision_cfg": {"layers": [3, 4, 6, 3], "width": 64}}, "ResNet image tower"),
        ({"text_cfg": {"hf_model_name": "xlm-roberta-base"}}, "text_cfg.hf_model_name"),
        ({"text_cfg": {"ls_init_value": 1e-4}}, "text_cfg.ls_init_value"),
        ({"vision_cfg": {"pool_type": "avg"}}, "vision_cfg.pool_type"),
        ({"vision_cfg": {"image_size": [32, 48]}}, "not square"),
        ({"custom_text": True}, "custom_text"),
        ({"vision_cfg": {"width": 33, "head_width": 16}}, "unusable open_clip model config"),
    ],
    ids=["timm", "resnet", "hf-text", "layer-scale", "avg-pool", "non-square", "custom-text", "bad-heads"],
)
def test_configs_that_are_not_plain_clip_are_refused(tmp_path: Path, change: dict, words: str) -> None:
    model_cfg = tiny_model_cfg(True)
    for key, value in change.items():
        model_cfg[key] = {**model_cfg[key], **value} if isinstance(value, dict) else value
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=words.replace("[", r"\[")):
        CLIPScorer.from_pretrained(folder)


def test_broken_folders_are_one_line_errors(open_clip, tmp_path: Path) -> None:
    folder = save_open_clip_folder(open_clip, tmp_path / "clip", tiny_model_cfg(True), "open_clip_model.safetensors")
    weights = folder / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = ["generate", "--n", "1", "--best-of", "2", "--steps", "1", "--scorer", "clip", "--clip-model", str(folder)]
    assert_one_line_error(catdiff(*args, "--out", str(tmp_path / "x.png")), "open_clip_model.safetensors")
    weights.unlink()
    with pytest.raises(UserError, match="no open_clip weights"):
        CLIPScorer.from_pretrained(folder)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_name": "ViT-B-32"}))
    with pytest.raises(UserError, match="has no model_cfg"):
        CLIPScorer.from_pretrained(folder)
