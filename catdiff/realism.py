"""The realism scorer: a small classifier that tells a model's training images from its own
samples, whose logit ranks candidates for best-of-N.

Azadi et al. 2019, "Discriminator Rejection Sampling": a classifier of real against generated
images estimates the density ratio p_data / p_model through its logit, so keeping the samples
with the highest logits moves the kept ones towards the data. Here the classifier is trained
after the fact, on the model's own samples, not alongside the generator as in a GAN.

Both classes pass through the same decoder: the real images are round-tripped through the
model's autoencoder (encode, decode) before training, so the classifier cannot tell them apart
by the decoder's own texture and has to learn what the denoiser gets wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from catdiff.errors import UserError
from catdiff.io.atomic import write_bytes
from catdiff.io.state_dicts import load_state_strict
from catdiff.metrics import batches, resize

if TYPE_CHECKING:
    from catdiff.pipeline import Pipeline

log = logging.getLogger(__name__)

REALISM_FILE = "realism.safetensors"
SIZE = 64  # the classifier's input side, in pixels
SAMPLE_SEED = 10**6  # the generated training images' first seed, far from the seeds users look at


class RealismClassifier(nn.Module):
    """Images in [-1, 1] at :data:`SIZE` px -> the logit of "a training image" (one per image):
    four stride-2 convolutions, global average pooling, a linear read-out."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.readout = nn.Linear(channels[-1], 1)
        self.width = width

    def forward(self, images: Tensor) -> Tensor:
        return self.readout(self.features(images).mean(dim=(2, 3))).squeeze(-1)


@dataclass
class Fit:
    """What training reported: accuracy on the images held out of it, and how many it saw."""

    heldout_accuracy: float
    heldout: int
    trained_on: int


class RealismScorer:
    """The classifier's logit of each image (higher: more like the training images)."""

    name = "realism"

    def __init__(self, network: RealismClassifier) -> None:
        self.network = network.eval()

    @classmethod
    def fit(
        cls,
        real: Tensor,
        generated: Tensor,
        *,
        epochs: int = 8,
        batch_size: int = 64,
        lr: float = 1e-3,
        heldout_fraction: float = 0.1,
        seed: int = 0,
    ) -> tuple[RealismScorer, Fit]:
        """Train on ``real`` (label 1) against ``generated`` (label 0), both float NCHW in
        [-1, 1] and balanced to the smaller count; mirror images as augmentation. A random
        ``heldout_fraction`` of each is kept out of training and scored at the end."""
        n = min(len(real), len(generated))
        if n < 20:
            raise UserError(f"the realism scorer needs at least 20 images of each kind, got {n}")
        generator = torch.Generator().manual_seed(seed)
        images = torch.cat([resize(real[:n], SIZE), resize(generated[:n], SIZE)])
        labels = torch.cat([torch.ones(n), torch.zeros(n)])
        order = torch.randperm(2 * n, generator=generator)
        held = max(2, int(2 * n * heldout_fraction))
        test, train = order[:held], order[held:]
        torch.manual_seed(seed)
        network = RealismClassifier()
        optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=0.05)
        steps = epochs * -(-len(train) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        network.train()
        for epoch in range(epochs):
            shuffled = train[torch.randperm(len(train), generator=generator)]
            total = 0.0
            for index in batches(shuffled, batch_size):
                x = images[index]
                flip = torch.rand(len(x), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.binary_cross_entropy_with_logits(network(x), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(x)
            log.info("realism scorer: epoch %d/%d, loss %.4f", epoch + 1, epochs, total / len(train))
        scorer = cls(network)
        accuracy = float(((scorer(images[test]) > 0).float() == labels[test]).float().mean())
        return scorer, Fit(accuracy, held, len(train))

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.half().contiguous() for name, tensor in self.network.state_dict().items()}
        write_bytes(folder / REALISM_FILE, safetensors_bytes(weights, metadata={"width": str(self.network.width)}))
        return folder / REALISM_FILE

    @classmethod
    def load(cls, folder: Path) -> RealismScorer:
        path = folder / REALISM_FILE
        if not path.is_file():
            raise UserError(f"no realism scorer in {folder} (export it with --realism-scorer)")
        with safe_open(str(path), framework="pt") as file:
            width = int((file.metadata() or {}).get("width", 32))
        network = RealismClassifier(width)
        load_state_strict(network, {name: tensor.float() for name, tensor in load_file(path).items()}, path)
        return cls(network)

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        return torch.cat([self.network(resize(batch, SIZE)) for batch in batches(images, 256)]).float()


@torch.inference_mode()
def round_trip(pipeline: Pipeline, images: Tensor, batch_size: int = 64) -> Tensor:
    """Images through the pipeline's autoencoder and back, as its samples are decoded (as they
    are for a pixel-space model)."""
    if pipeline.autoencoder is None:
        return images
    coded = [pipeline.decode(pipeline.autoencoder.encode(batch)) for batch in batches(images, batch_size)]
    return torch.cat(coded)


def fit_realism_scorer(pipeline: Pipeline, images_folder: Path, *, samples: int = 4000) -> tuple[RealismScorer, Fit]:
    """Train the realism scorer of ``pipeline``: up to ``samples`` of its training images
    (evenly spaced, at its image size, round-tripped) against as many of its default samples."""
    from catdiff.data.image_folder import ImageFolder, uint8_to_float

    factor = 1 if pipeline.autoencoder is None else pipeline.autoencoder.downsampling_factor
    side = pipeline.sample_shape[-1] * factor
    images = ImageFolder(images_folder, side, preload=True).images
    real = round_trip(pipeline, uint8_to_float(images[:: max(1, len(images) // samples)][:samples]))
    log.info("realism scorer: sampling %d images to train on", len(real))
    generated = pipeline.sample(len(real), seed=SAMPLE_SEED, batch_size=64, progress=None).cpu()
    return RealismScorer.fit(real, generated)
