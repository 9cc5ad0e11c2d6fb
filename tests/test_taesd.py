"""TAESD: the bundled weights, shapes, parity with diffusers' AutoencoderTiny, and the
round-trip quality on real cat faces that makes 128 px the smallest size worth diffusing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from conftest import require_shared
from safetensors.torch import load_file, save_file

import catdiff
from catdiff.data.image_folder import ImageFolder, find_images
from catdiff.errors import UserError
from catdiff.io.taesd import BUNDLED_WEIGHTS, DECODER_FILE, ENCODER_FILE, load_taesd, save_taesd
from catdiff.models.taesd import TAESD

# The files of ../shared/weights/taesd/SHA256SUMS, shipped unmodified.
SHA256 = {
    ENCODER_FILE: "a6b8c0fda4aad50784e543389e0239c72c5e31e9775c9e612ea8333bf3a77dcb",
    DECODER_FILE: "d903e7cc3ae58f21d985a3498a841fa8b230edccff7ac5d27607b0c557945c6f",
}


@pytest.fixture(scope="module")
def taesd() -> TAESD:
    return load_taesd()


def test_bundled_weights_ship_inside_the_package_with_their_license(taesd: TAESD) -> None:
    assert BUNDLED_WEIGHTS.is_relative_to(Path(catdiff.__file__).resolve().parent)
    for name, digest in SHA256.items():
        assert hashlib.sha256((BUNDLED_WEIGHTS / name).read_bytes()).hexdigest() == digest
    assert "Ollin Boer Bohan" in (BUNDLED_WEIGHTS / "LICENSE").read_text()
    # The published key names load as they are (load_taesd loads strictly).
    assert set(taesd.encoder.state_dict()) == set(load_file(BUNDLED_WEIGHTS / ENCODER_FILE))
    assert set(taesd.decoder.state_dict()) == set(load_file(BUNDLED_WEIGHTS / DECODER_FILE))
    assert all(p.dtype == torch.float32 for p in taesd.parameters())
    assert not taesd.training


def test_missing_or_wrong_weights_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(f"not found: {tmp_path / ENCODER_FILE}")):
        load_taesd(tmp_path)
    (tmp_path / ENCODER_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=re.escape(f"corrupt or unreadable safetensors file {tmp_path / ENCODER_FILE}")):
        load_taesd(tmp_path)
    save_file({"weight": torch.zeros(1)}, tmp_path / ENCODER_FILE)
    with pytest.raises(UserError, match=re.escape(f"weights in {tmp_path / ENCODER_FILE} do not fit TAESD")) as caught:
        load_taesd(tmp_path)
    assert "missing keys ['0.weight'" in str(caught.value) and "unexpected keys ['weight']" in str(caught.value)
    assert "\n" not in str(caught.value)  # one line for the CLI


def test_saved_folder_loads_back_with_the_same_weights(taesd: TAESD, tmp_path: Path) -> None:
    folder = save_taesd(taesd, tmp_path / "taesd")
    assert (folder / "LICENSE").is_file()
    again = load_taesd(folder)
    assert all(torch.equal(a, b) for a, b in zip(taesd.state_dict().values(), again.state_dict().values(), strict=True))
    assert {t.dtype for t in load_file(folder / ENCODER_FILE).values()} == {torch.bfloat16}  # lossless, as shipped


def test_shapes(taesd: TAESD) -> None:
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        latents = taesd.encode_latents(images)
        assert latents.shape == (2, taesd.latent_channels, 16, 16)
        assert taesd.decode_latents(latents).shape == (2, 3, 128, 128)
        assert taesd.encode_latents(torch.zeros(1, 3, 64, 96)).shape == (1, 4, 8, 12)


def _autoencoder_tiny(taesd: TAESD):
    """diffusers' AutoencoderTiny holding the same weights.

    Its ``encoder.layers`` are TAESD's encoder indices; its ``decoder.layers`` leave out
    TAESD's decoder index 0 (the soft clamp, which ``DecoderTiny.forward`` applies itself),
    so decoder index i is its layer i - 1.
    """
    diffusers = pytest.importorskip("diffusers")
    state = {f"encoder.layers.{k}": v for k, v in taesd.encoder.state_dict().items()}
    for key, value in taesd.decoder.state_dict().items():
        index, rest = key.split(".", 1)
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    reference = diffusers.AutoencoderTiny()
    reference.load_state_dict(state)  # strict: every parameter is covered
    return reference.eval()


def test_parity_with_diffusers_autoencoder_tiny(taesd: TAESD) -> None:
    """Same weights, same input, same output: no convention differs.

    diffusers' EncoderTiny maps images from [-1, 1] to [0, 1] and DecoderTiny maps back, as
    ``TAESD.encode_latents``/``decode_latents`` do; ``AutoencoderTiny.encode`` returns the latents unscaled
    and its ``scaling_factor`` is 1.0, because TAESD's latents are already SD-scaled.
    (``latent_magnitude``/``latent_shift`` only serve its uint8 round trip in ``forward``,
    which is not compared.)
    """
    reference = _autoencoder_tiny(taesd)
    assert reference.config.scaling_factor == 1.0
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    latents = torch.randn(2, 4, 8, 8, generator=gen) * 2  # large enough to use the soft clamp
    with torch.no_grad():
        torch.testing.assert_close(taesd.encode_latents(images), reference.encode(images).latents, rtol=0, atol=1e-4)
        torch.testing.assert_close(taesd.decode_latents(latents), reference.decode(latents).sample, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_round_trip_psnr_on_cat_faces_at_128px(taesd: TAESD, tmp_path: Path) -> None:
    """Must hold: mean per-image PSNR of encode -> decode at 128 px is at least 26 dB.

    32 faces taken evenly across cat-faces-64, up-sampled to 128 px by ImageFolder. (On 128
    such faces this measures 21.5 dB at 64 px, 27.1 dB at 128 px and 31.7 dB at 256 px.)
    """
    root = require_shared("data/cat-faces-64")
    files = find_images(root)
    count = 32
    for i in range(count):  # a folder of links, so ImageFolder does not scan all 8,303 files
        path = files[i * len(files) // count]
        (tmp_path / path.name).symlink_to(path)
    faces = ImageFolder(tmp_path, 128, num_workers=0)
    images = torch.stack([faces[i] for i in range(len(faces))])
    with torch.no_grad():  # one image at a time: faster on a CPU than one big batch
        decoded = torch.cat([taesd.decode_latents(taesd.encode_latents(x)) for x in images.split(1)]).clamp(-1, 1)
    mse = ((decoded - images) / 2).pow(2).flatten(1).mean(1)  # per image, pixels in [0, 1]
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    assert psnr >= 26.0, f"TAESD round trip at 128 px: {psnr:.2f} dB"
