"""Peak memory of loading a full-size SD-1.5 checkpoint, against the file's size.

Writes a random SD-1.5 checkpoint in the real CompVis single-file layout (the 1131 tensors of
``v1-5-pruned-emaonly``: U-Net, VAE, CLIP text encoder) as fp16 ``.safetensors`` (2.1 GB) and
fp32 ``.ckpt`` (4.3 GB) into a temporary folder, then loads each, in a fresh process per case,
through ``catdiff.sd_checkpoint.load_stable_diffusion`` and reports the process's peak resident
memory (``VmHWM``, the kernel's ``ru_maxrss`` of this process alone): right after loading (memory-mapped weights are read lazily) and after
every weight has been read once (the whole model resident, as after a first denoising step).
The Python + torch baseline of the child is measured before loading and shown apart; the
last column splits the final RSS into anonymous memory and file-backed pages (clean pages of the
memory-mapped file: the kernel can drop and re-read them, so they are not memory the load needs).

    nice -n 10 python bench/sd_load_memory.py            # about 5 minutes and 7 GB of disk
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from catdiff.io.vae_keys import vae_state_to_compvis
from catdiff.models.vae import AutoencoderKL
from catdiff.sd.checkpoint import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from catdiff.sd.text_encoder import CLIPTextEncoder
from catdiff.sd.unet import SDUNet
from catdiff.sd.unet_keys import unet_state_to_compvis

GIB = 1024**3

CHILD = """
import json, sys, torch
from catdiff.sd.checkpoint import load_stable_diffusion

def status(field):
    # /proc/self/status fields, in bytes. VmHWM is the high-water mark of this process's RSS
    # (ru_maxrss is the same number, except that after fork + exec it inherits the parent's peak).
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

def peak():
    return status("VmHWM")

baseline = peak()
models = load_stable_diffusion(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
loaded = peak()
with torch.no_grad():
    for module in (models.unet, models.vae, models.text_encoder):
        for p in module.parameters():
            p.sum()  # reads every byte once
resident = peak()
anonymous, file_backed = status("RssAnon"), status("RssFile")
print(json.dumps({"baseline": baseline, "loaded": loaded, "resident": resident, "anonymous": anonymous, "file_backed": file_backed}))
"""


def full_size_compvis_shapes() -> dict[str, torch.Size]:
    """Key -> shape of every tensor of an SD-1.5 single file, from our modules on the meta device."""
    with torch.device("meta"):
        unet, vae, text = SDUNet().state_dict(), AutoencoderKL().state_dict(), CLIPTextEncoder().state_dict()
    shapes = {UNET_PREFIX + k: v.shape for k, v in unet_state_to_compvis(unet, SDUNet().config).items()}
    shapes |= {VAE_PREFIX + k: v.shape for k, v in vae_state_to_compvis(vae).items()}
    shapes |= {f"{TEXT_PREFIX}text_model.{k}": v.shape for k, v in text.items()}
    return shapes


def random_checkpoint(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) * 0.02).to(dtype) for k, s in full_size_compvis_shapes().items()}
    state[f"{TEXT_PREFIX}text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return state


def write_checkpoints(folder: Path) -> dict[str, Path]:
    files = {"fp16 .safetensors": folder / "sd15-random-fp16.safetensors", "fp32 .ckpt": folder / "sd15-random.ckpt"}
    if not files["fp32 .ckpt"].is_file():
        print("writing the fp32 .ckpt ...", file=sys.stderr, flush=True)
        torch.save({"state_dict": random_checkpoint(torch.float32), "global_step": 0}, files["fp32 .ckpt"])
    if not files["fp16 .safetensors"].is_file():
        print("writing the fp16 .safetensors ...", file=sys.stderr, flush=True)
        save_file(random_checkpoint(torch.float16), files["fp16 .safetensors"])
    return files


def measure(path: Path, dtype: str) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), dtype], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(files: dict[str, Path]) -> list[dict]:
    """Measure every (file, dtype) case and print a Markdown table."""
    cases = [
        ("fp16 .safetensors", "float16"),
        ("fp16 .safetensors", "float32"),
        ("fp32 .ckpt", "float32"),
        ("fp32 .ckpt", "float16"),
    ]
    rows = []
    print(
        "| file | size | loaded as | peak RSS after load | peak RSS, every weight read | / file size | then: anonymous + file-backed |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, dtype in cases:
        size = files[name].stat().st_size
        m = measure(files[name], dtype)
        rows.append({"file": name, "size": size, "dtype": dtype, **m})
        net = m["resident"] - m["baseline"]
        print(
            f"| {name} | {size / GIB:.2f} GiB | {dtype} | {(m['loaded'] - m['baseline']) / GIB:.2f} GiB "
            f"| {net / GIB:.2f} GiB | {net / size:.2f} | {m['anonymous'] / GIB:.2f} + {m['file_backed'] / GIB:.2f} GiB |",
            flush=True,
        )
    print(f"(Python + torch baseline of the loading process: {rows[0]['baseline'] / GIB:.2f} GiB, not counted)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="keep the checkpoints in this folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        rows = report(write_checkpoints(args.dir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = report(write_checkpoints(Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
