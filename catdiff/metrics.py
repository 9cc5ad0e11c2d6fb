"""Sample-quality metrics: Fréchet distance and KID in a feature space, and memorisation.

- Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule") and the
  kernel distance KID (Bińkowski et al. 2018, "Demystifying MMD GANs") are computed by torchmetrics
  over any feature extractor. With the Inception-v3 of torch-fidelity they are FID and KID proper;
  those weights cannot be downloaded here, so :class:`TAESDFeatures` gives a Fréchet distance that
  needs no download at all, to follow training progress.
- Memorisation (after Carlini et al. 2023, "Extracting Training Data from Diffusion Models"):
  each sample's distance to its nearest training image, against the same distance for held-out
  images that the model never saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catdiff.data.image_folder import ImageFolder, uint8_to_float
from catdiff.errors import UserError
from catdiff.io.taesd import load_taesd
from catdiff.models.taesd import TAESD

FEATURE_SIZE = 64  # images are compared at this side, in pixels


def resize(images: Tensor, size: int = FEATURE_SIZE) -> Tensor:
    """Area-resample square NCHW images to ``size`` (a no-op at that size)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="area" if images.shape[-1] > size else "bilinear")


def batches(images: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


class TAESDFeatures(nn.Module):
    """A feature extractor that needs no download: the bundled TAESD encoder's activations.

    Images in [-1, 1] are resampled to 64 px; the output of the last block at each of the
    encoder's four resolutions (64, 32, 16, 8 px) is averaged over space, giving 4 x 64 = 256
    features. Texture and layout statistics of that network, not semantics: use it to compare
    models and checkpoints with one another, not with published FIDs.
    """

    TAPS = (1, 5, 9, 13)  # indices of the encoder's last block at each resolution

    def __init__(self, taesd: TAESD | None = None) -> None:
        super().__init__()
        encoder = (taesd or load_taesd()).encoder
        self.layers = nn.Sequential(*list(encoder)[: self.TAPS[-1] + 1]).eval().requires_grad_(False)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        x = (resize(images) + 1) / 2
        pooled = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.TAPS:
                pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


class InceptionPool3(nn.Module):
    """FID's features: the 2048 pool3 activations of torch-fidelity's Inception-v3, from a local file.

    Never downloads: the weights file (``weights-inception-2015-12-05-6726825d.pth``, as
    torch-fidelity names it) must be on disk, and torch-fidelity must be importable.
    """

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise UserError(
                f"Inception weights not found: {path} (FID/KID need the pt_inception-2015-12-05 file;"
                " without it use the TAESD features, which need no download)"
            )
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as error:
            raise UserError(f"FID/KID need torch-fidelity (pip install torch-fidelity): {error}") from None
        self.inception = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
        ).eval()

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        """[-1, 1] images -> [N, 2048]; the network wants uint8 and resizes to 299 px itself."""
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.inception(pixels)[0]


@dataclass
class Distances:
    """Fréchet distance, and KID's mean and standard deviation over subsets."""

    frechet: float
    kid_mean: float | None = None
    kid_std: float | None = None


class FrechetToReference:
    """The Fréchet distance of image sets to one fixed real set, whose features are taken once.

    Images are float NCHW in [-1, 1]; each call measures a new set against the same real one.
    """

    def __init__(self, real: Tensor, features: nn.Module, *, batch_size: int = 64) -> None:
        if len(real) < 2:
            raise UserError("Fréchet distance needs at least 2 images on each side")
        from torchmetrics.image.fid import FrechetInceptionDistance  # imported late: it takes seconds

        # (normalize: torchmetrics probes a custom extractor with a float image, not a uint8 one)
        self.fid = FrechetInceptionDistance(
            feature=features, reset_real_features=False, normalize=True, input_img_size=tuple(real.shape[1:])
        )
        self.batch_size = batch_size
        for batch in batches(real, batch_size):
            self.fid.update(batch, real=True)

    def __call__(self, fake: Tensor) -> float:
        if len(fake) < 2:
            raise UserError("Fréchet distance needs at least 2 images on each side")
        self.fid.reset()  # forgets the previous set only: the real features are kept
        for batch in batches(fake, self.batch_size):
            self.fid.update(batch, real=False)
        return float(self.fid.compute())


def feature_distances(
    real: Tensor, fake: Tensor, features: nn.Module, *, kid: bool = True, batch_size: int = 64
) -> Distances:
    """Fréchet distance (and KID) between two image sets, float NCHW in [-1, 1], in ``features``' space."""
    result = Distances(frechet=FrechetToReference(real, features, batch_size=batch_size)(fake))
    if kid:
        subset = min(len(real), len(fake), 1000)
        from torchmetrics.image.kid import KernelInceptionDistance

        kid_metric = KernelInceptionDistance(feature=features, subset_size=subset, reset_real_features=False)
        for images, is_real in ((real, True), (fake, False)):
            for batch in batches(images, batch_size):
                kid_metric.update(batch, real=is_real)
        mean, std = kid_metric.compute()
        result.kid_mean, result.kid_std = float(mean), float(std)
    return result


def nearest_distances(queries: Tensor, references: Tensor) -> Tensor:
    """Each query's Euclidean distance to its nearest reference (images flattened, any shape)."""
    q = queries.flatten(1).double()
    r = references.flatten(1).double()
    nearest = torch.empty(len(q), dtype=torch.float64)
    for start in range(0, len(q), 256):
        nearest[start : start + 256] = torch.cdist(q[start : start + 256], r).min(dim=1).values
    return nearest


@dataclass
class Memorisation:
    """Nearest-training-image distances of samples against those of held-out images."""

    sample_nearest: Tensor  # per sample
    heldout_nearest: Tensor  # per held-out image

    @property
    def fraction_closer(self) -> float:
        """Fraction of samples nearer a training image than any held-out image is to one."""
        return float((self.sample_nearest < self.heldout_nearest.min()).double().mean())

    @property
    def median_ratio(self) -> float:
        """Median sample distance over median held-out distance (about 1 or more: no copying)."""
        return float(self.sample_nearest.median() / self.heldout_nearest.median())


def memorisation(samples: Tensor, train: Tensor, heldout: Tensor, *, size: int = 32) -> Memorisation:
    """Compare samples and held-out images by their pixel distance to the nearest training image.

    All three are float NCHW in [-1, 1]; they are compared at ``size`` px, where a copy of a
    training image stays close and small misalignments do not dominate.
    """
    train_small = resize(train, size)
    return Memorisation(
        sample_nearest=nearest_distances(resize(samples, size), train_small),
        heldout_nearest=nearest_distances(resize(heldout, size), train_small),
    )


def evaluate(
    samples: Tensor,
    train: Tensor,
    heldout: Tensor | None = None,
    *,
    features: nn.Module | None = None,
    kid: bool = False,
) -> dict[str, float]:
    """The report of ``catdiff eval``: feature distances of samples to the training images, and
    (given held-out images) memorisation. All images float NCHW in [-1, 1], any square size."""
    distances = feature_distances(train, samples, features or TAESDFeatures(), kid=kid)
    report = {"frechet": distances.frechet}
    if kid:
        report.update(kid_mean=distances.kid_mean, kid_std=distances.kid_std)
    if heldout is not None:
        found = memorisation(samples, train, heldout)
        report.update(
            memorised_fraction=found.fraction_closer,
            nearest_median_ratio=found.median_ratio,
            sample_nearest_median=float(found.sample_nearest.median()),
            heldout_nearest_median=float(found.heldout_nearest.median()),
        )
    return report


def read_images(folder: Path, *, at_most: int | None = None) -> Tensor:
    """A folder's images at 64 px as float NCHW in [-1, 1]; at most ``at_most`` of them, evenly spaced."""
    images = ImageFolder(folder, FEATURE_SIZE, preload=True).images
    if at_most is not None:
        images = images[:: max(1, -(-len(images) // at_most))]
    return uint8_to_float(images)


def is_sample_folder(spec: str | Path) -> bool:
    """Whether ``spec`` is a folder of images rather than a model (a bundled model's name, or a
    pipeline, diffusers pipeline, model, checkpoint or run folder)."""
    from catdiff.io.diffusers_pipeline import is_diffusers_folder
    from catdiff.pipeline import BUNDLED_PIPELINES

    path = Path(spec)
    model_files = ("pipeline.json", "config.json", "checkpoints")
    is_model = any((path / f).exists() for f in model_files) or is_diffusers_folder(path)
    return str(spec) not in BUNDLED_PIPELINES and path.is_dir() and not is_model


def evaluation_samples(
    spec: str | Path, *, n: int = 500, device: str | torch.device = "cpu", **sampling: Any
) -> Tensor:
    """The images to evaluate, float NCHW in [-1, 1] on the CPU: a folder of images, or ``n``
    images that a model samples on ``device`` (``sampling`` goes to ``Pipeline.sample``)."""
    if is_sample_folder(spec):
        return read_images(Path(spec))
    from catdiff.pipeline import BUNDLED_PIPELINES, Pipeline, pipeline_folder

    folder = pipeline_folder(spec) if str(spec) in BUNDLED_PIPELINES else Path(spec)
    return Pipeline.from_folder(folder, device=device).sample(n, progress=None, **sampling).cpu()


def evaluate_folders(
    samples: str | Path,
    train: Path,
    heldout: Path | None = None,
    *,
    max_train: int = 2000,
    inception: Path | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """:func:`evaluate` on folders: the samples of :func:`evaluation_samples` (given ``sampling``)
    against at most ``max_train`` training images; FID and KID proper with an ``inception`` weights
    file, the TAESD features' Fréchet distance without."""
    features = InceptionPool3(inception) if inception is not None else None
    train_images = read_images(train, at_most=max_train)
    heldout_images = read_images(heldout) if heldout is not None else None
    images = evaluation_samples(samples, **sampling)
    report: dict[str, Any] = evaluate(images, train_images, heldout_images, features=features, kid=features is not None)
    report["features"] = "taesd" if features is None else "inception"
    return report
