"""catdiff.data.image_folder: image folders (readable files, modes, errors), random_hflip, real data."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_shared
from PIL import Image
from synthetic import make_messy_folder, noise_image

from catdiff.data.image_folder import ImageFolder, find_images, random_hflip
from catdiff.errors import UserError

S = 16


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, set[str], set[str]]:
    """(root, readable, unreadable) of a folder with every kind of file a user's folder holds."""
    root = tmp_path / "messy"
    readable, unreadable = make_messy_folder(root)
    return root, readable, unreadable


def _names(root: Path, paths: list[Path]) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths}


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "catdiff.data.image_folder"]


@pytest.mark.parametrize("preload", [False, True])
def test_messy_folder_keeps_exactly_the_readable_images(messy, caplog, preload):
    root, readable, unreadable = messy
    with caplog.at_level(logging.WARNING, logger="catdiff.data.image_folder"):
        ds = ImageFolder(root, S, preload=preload, num_workers=2)

    assert _names(root, ds.paths) == readable
    assert _names(root, ds.skipped) == unreadable
    assert len(ds) == len(readable)
    assert ds.paths == sorted(ds.paths, key=lambda p: p.relative_to(root).as_posix())

    (record,) = _warnings(caplog)  # exactly one warning for the whole folder
    msg = record.getMessage()
    assert f"skipped 2 of {len(readable) + 2} files" in msg
    assert "truncated.jpg" in msg and "notes.jpg" in msg

    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, S, S) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
    if preload:
        assert ds.images.shape == (len(ds), 3, S, S) and ds.images.dtype == torch.uint8
    assert ds.labels is None  # the interface a latent cache reads, shared with Digits
    assert ds.files_digest() == ImageFolder(root, S * 2, num_workers=0).files_digest()  # names, not pixels


def test_preload_lazy_and_load_all_agree(messy):
    root, _, _ = messy
    lazy = ImageFolder(root, S, num_workers=0)
    pre = ImageFolder(root, S, preload=True, num_workers=2)
    assert lazy.paths == pre.paths
    lazy_items = torch.stack([lazy[i] for i in range(len(lazy))])
    torch.testing.assert_close(lazy_items, torch.stack([pre[i] for i in range(len(pre))]))
    assert torch.equal(lazy.load_all(num_workers=2), pre.images)
    assert lazy.load_all() is lazy.images  # cached


def test_modes_convert_to_rgb(messy):
    root, _, _ = messy
    ds = ImageFolder(root, S, preload=True, num_workers=0)
    px = {p.relative_to(root).as_posix(): ds.images[i] for i, p in enumerate(ds.paths)}

    def close(a: torch.Tensor, rgb, tol=6) -> bool:
        return bool((a.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max() <= tol)

    assert close(px["tiny.png"], (10, 200, 30), tol=0)  # 1x1 upscaled to a flat square
    assert close(px["cmyk.jpg"], (0, 255, 255), tol=10)  # CMYK cyan -> RGB cyan
    assert close(px["rgba.png"][:, -4:], (255, 0, 0))  # opaque red stays red
    assert close(px["rgba.png"][:, :4], (255, 255, 255))  # transparent -> white
    assert close(px["la.png"], (255, 255, 255))
    assert close(px["palette.png"], (0, 255, 0))
    assert close(px["palette_opaque.bmp"], (0, 255, 0))
    assert close(px["grey.jpg"], (77, 77, 77))
    assert close(px["grey16.png"], (128, 128, 128), tol=1)  # 16-bit scaled, not clipped to 255


def test_resize_shorter_side_and_center_crop(tmp_path):
    # 60x20 -> 30x10, centre crop 10x10 = source columns 20..40; the bicubic filter also
    # reads 4 columns either side, so the red sides start further out, at 16 and 44.
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :16] = wide[:, 44:] = (255, 0, 0)
    wide[:, 16:44] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    x = ImageFolder(tmp_path, 10, num_workers=0)[0]
    blue = torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 10, 10)
    torch.testing.assert_close(x, blue)


def test_find_images_ignores_other_files(messy):
    root, readable, unreadable = messy
    assert _names(root, find_images(root)) == readable | unreadable


def test_no_truncated_images_flag_left_on(messy):
    from PIL import ImageFile

    ImageFolder(messy[0], S, num_workers=0)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no_images", "all_unreadable"])
def test_bad_roots_are_user_errors_naming_the_path(tmp_path, case):
    root = tmp_path / "photos"
    if case == "file":
        noise_image(8, 8).save(tmp_path / "photos.png")
        root = tmp_path / "photos.png"
    elif case != "missing":
        root.mkdir()
    if case == "no_images":
        (root / "a.txt").write_text("x")
        (root / "sub").mkdir()
        (root / "sub" / "b.csv").write_text("x")
    if case == "all_unreadable":
        (root / "a.jpg").write_text("x")
    with pytest.raises(UserError) as info:
        ImageFolder(root, S)
    msg = str(info.value)
    assert str(root) in msg and "\n" not in msg


def test_random_hflip_is_deterministic_per_generator():
    batch = torch.arange(64 * 2 * 3 * 5, dtype=torch.float32).view(64, 2, 3, 5)
    a = random_hflip(batch, torch.Generator().manual_seed(7))
    b = random_hflip(batch, torch.Generator().manual_seed(7))
    c = random_hflip(batch, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    flipped = [torch.equal(a[i], batch[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(a[i], batch[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each image: flipped or untouched
    assert 16 < sum(flipped) < 48
    # the flips are the generator's draws, and use exactly one rand(N)
    reference = torch.Generator().manual_seed(7)
    assert flipped == (torch.rand(64, generator=reference) < 0.5).tolist()
    g = torch.Generator().manual_seed(7)
    random_hflip(batch, g)
    assert torch.equal(g.get_state(), reference.get_state())
    assert torch.equal(random_hflip(batch.to(torch.uint8), torch.Generator().manual_seed(7)), a.to(torch.uint8))
    with pytest.raises(ValueError):
        random_hflip(batch[0], g)


@pytest.mark.slow
def test_cat_faces_64_loads_fully():
    root = require_shared("data/cat-faces-64")
    t = time.perf_counter()
    ds = ImageFolder(root, 64, preload=True)
    seconds = time.perf_counter() - t
    print(f"cat-faces-64: {len(ds)} images preloaded in {seconds:.1f} s")
    assert len(ds) > 8000 and not ds.skipped
    assert ds.images.shape == (len(ds), 3, 64, 64)
    x = ds[0]
    assert x.shape == (3, 64, 64) and -1 <= x.min() < x.max() <= 1


def test_cat_photos_200_sample_constructs(tmp_path):
    # Messy real photos must load, not crash. A sample keeps this fast: every 10th file and
    # the five smallest (the nearly empty ones), linked into a temporary folder.
    root = require_shared("data/cat-photos-200")
    files = sorted(root.glob("*.jpg"))
    sample = set(files[::10]) | set(sorted(files, key=lambda p: p.stat().st_size)[:5])
    for f in sample:
        (tmp_path / f.name).symlink_to(f)
    ds = ImageFolder(tmp_path, 128)
    assert len(ds) == len(sample) and not ds.skipped
    for i in (0, len(ds) // 2, len(ds) - 1):
        x = ds[i]
        assert x.shape == (3, 128, 128) and -1 <= x.min() < x.max() <= 1


@pytest.mark.slow
def test_cat_photos_200_constructs_fully(request):
    if "slow" not in request.config.getoption("markexpr"):
        pytest.skip("checks all 11,997 photos (~5-10 s); run with -m slow")
    root = require_shared("data/cat-photos-200")
    t = time.perf_counter()
    ds = ImageFolder(root, 128)
    print(f"cat-photos-200: {len(ds)} images checked in {time.perf_counter() - t:.1f} s")
    assert len(ds) > 11000 and not ds.skipped
