"""Small synthetic image folders for tests that must not depend on ../shared."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# A general U-Net small enough for tests to train in seconds (16x16 RGB images).
TINY_UNET = {
    "type": "unet",
    "in_channels": 3,
    "out_channels": 3,
    "base_channels": 32,
    "channel_mult": [1, 2],
    "attention_levels": [1],
}


def make_image_folder(root: Path, n: int = 32, size: int = 16, seed: int = 0) -> Path:
    """``n`` PNGs of a bright disc on a dark background at random places and colours."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        radius = rng.uniform(size * 0.15, size * 0.35)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2)[..., None]
        colour = rng.integers(128, 256, 3)
        image = np.where(disc, colour, rng.integers(0, 40, 3)).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{i:03d}.png")
    return root


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_messy_folder(root: Path) -> tuple[set[str], set[str]]:
    """Fill ``root`` with every kind of file a user's folder holds; returns the names (relative
    to root) of the (readable, unreadable) images."""
    (root / "sub" / "deeper").mkdir(parents=True)
    noise_image(40, 30, 1).save(root / "good1.jpg")
    noise_image(30, 50, 2).save(root / "good2.png")
    noise_image(20, 20, 3).save(root / "good3.webp")
    noise_image(24, 18, 4).save(root / "GOOD4.BMP")  # upper-case extension
    noise_image(33, 21, 5).save(root / "sub" / "deeper" / "nested.jpeg")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "tiny.png")
    Image.new("CMYK", (20, 20), (255, 0, 0, 0)).save(root / "cmyk.jpg")  # cyan
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 20, 10))  # top half transparent blue
    rgba.save(root / "rgba.png")
    Image.new("LA", (20, 20), (0, 0)).save(root / "la.png")  # fully transparent black
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    pal.save(root / "palette_opaque.bmp")
    Image.new("L", (25, 20), 77).save(root / "grey.jpg")
    Image.fromarray(np.full((20, 20), 32896, dtype=np.uint16)).save(root / "grey16.png")  # I;16
    # unreadable:
    (root / "truncated.jpg").write_bytes(_jpeg_bytes(noise_image(64, 64, 6))[:1200])
    (root / "notes.jpg").write_text("this is not an image\n")
    # ignored (not image extensions, or hidden):
    (root / "readme.txt").write_text("hello")
    noise_image(8, 8).save(root / "._good1.jpg")
    (root / ".cache").mkdir()
    noise_image(8, 8).save(root / ".cache" / "thumb.png")

    readable = {
        "good1.jpg",
        "good2.png",
        "good3.webp",
        "GOOD4.BMP",
        "sub/deeper/nested.jpeg",
        "tiny.png",
        "cmyk.jpg",
        "rgba.png",
        "la.png",
        "palette.png",
        "palette_opaque.bmp",
        "grey.jpg",
        "grey16.png",
    }
    return readable, {"truncated.jpg", "notes.jpg"}
