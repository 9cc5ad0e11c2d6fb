"""Tiny random Stable Diffusion 1.x pipelines in the real on-disk layouts, for the SD tests.

The reference models are diffusers' and transformers' own classes with random weights (and
noise on every parameter, so GroupNorm's 1/0 init cannot hide a swapped key); they are saved as
a diffusers folder and converted to CompVis single files (.safetensors and .ckpt), and
catdiff loads them through the same paths a user's checkpoint takes.

The shapes are chosen so a single file's config can be read back from its weights as for
SD-1.x: 8 attention heads per U-Net level, 32 GroupNorm groups, one text head per 64 channels.

Reference code whose package imports more than its tested path needs (open_clip and
k-diffusion import torchvision, which cannot be installed beside this PyTorch) is imported with
inert stand-ins for the packages that are missing (:func:`imported_with_stand_ins`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from catdiff.io.vae_keys import vae_state_to_compvis
from catdiff.sd.checkpoint import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from catdiff.sd.tokenizer import open_clip_vocabulary, read_bpe_vocabulary
from catdiff.sd.unet import SDUNetConfig
from catdiff.sd.unet_keys import unet_state_to_compvis

TEXT_WIDTH = 128
UNET_KWARGS = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 8,  # diffusers' name for the head count
    "norm_num_groups": 32,
    "sample_size": 8,
}
OUR_UNET = SDUNetConfig(
    block_out_channels=(32, 64),
    cross_attention=(True, False),
    layers_per_block=1,
    attention_heads=8,
    cross_attention_dim=TEXT_WIDTH,
    sample_size=8,
)
VAE_KWARGS = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
}
TEXT_KWARGS = {
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": TEXT_WIDTH // 64,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
}
#: diffusers scheduler settings of SD-1.x's training schedule.
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def clip_tokenizer_files(folder: Path) -> Path:
    """transformers' ``vocab.json`` + ``merges.txt`` written from the vocabulary open_clip ships."""
    vocab, merges = read_bpe_vocabulary(open_clip_vocabulary())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return folder


def reference_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_files(folder)), model_max_length=77)


def tiny_reference_pipeline(folder: Path, seed: int = 0):
    """diffusers' StableDiffusionPipeline with tiny random parts, saved to ``folder / "pipe"``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=perturb(AutoencoderKL(**VAE_KWARGS), seed + 1),
        text_encoder=perturb(CLIPTextModel(CLIPTextConfig(**TEXT_KWARGS)), seed + 2),
        tokenizer=reference_tokenizer(folder / "tokenizer-files"),
        unet=perturb(UNet2DConditionModel(**UNET_KWARGS), seed + 3),
        scheduler=DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder / "pipe")
    return pipe


def compvis_state(pipe) -> dict[str, Tensor]:
    """The pipeline's weights in the layout of a CompVis single file (``v1-5-pruned-emaonly``)."""
    unet = unet_state_to_compvis(pipe.unet.state_dict(), OUR_UNET)
    vae = vae_state_to_compvis(pipe.vae.state_dict())
    text = pipe.text_encoder.state_dict()
    state = {
        **{UNET_PREFIX + k: v for k, v in unet.items()},
        **{VAE_PREFIX + k: v for k, v in vae.items()},
        **{f"{TEXT_PREFIX}text_model.{k.removeprefix('text_model.')}": v for k, v in text.items()},
    }
    state[TEXT_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.rand(1000)  # schedule buffers and EMA counters ride along, unused
    state["model_ema.num_updates"] = torch.tensor(0)
    return state


def write_single_file(path: Path, state: dict[str, Tensor]) -> Path:
    """``.safetensors``, or a ``.ckpt`` as CompVis saved them (``{"state_dict": ..., "global_step": ...}``)."""
    if path.suffix == ".safetensors":
        save_file({k: v.detach().contiguous() for k, v in state.items()}, path)
    else:
        torch.save({"state_dict": state, "global_step": 470000}, path)
    return path


class _Inert(type):
    """Every attribute of a stand-in class is the class again: enough for module-level imports,
    defaults and decorators that name it; calling it fails loudly."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a stand-in for a missing package was used: {cls.__name__}")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (), {})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports any module of the ``packages`` (top-level names) as a stand-in module, with the
    given attributes on the top-level one."""

    def __init__(self, packages: Mapping[str, Mapping[str, Any]]) -> None:
        self.packages = packages

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__dict__.update(self.packages.get(spec.name, {}))
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []


@contextlib.contextmanager
def imported_with_stand_ins(name: str, packages: Mapping[str, Mapping[str, Any]]) -> Iterator[types.ModuleType]:
    """Module ``name``, imported where each of ``packages`` that is not installed is a stand-in
    (with the attributes given for it). On exit the stand-ins and every module of ``name``'s
    package leave ``sys.modules``, so nothing else sees them."""
    missing = {package: attributes for package, attributes in packages.items() if not importlib.util.find_spec(package)}
    finder = _StandInFinder(missing)
    roots = {name.split(".")[0], *missing}
    sys.meta_path.insert(0, finder)
    try:
        yield importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)
        for module in [m for m in sys.modules if m.split(".")[0] in roots]:
            del sys.modules[module]
