"""A small CNN that tells digits apart: the judge of the class-conditional digits model.

    python bench/digit_classifier.py /work/runs/digits/data/train /work/runs/digits/data/heldout

Three conv -> ReLU -> max-pool stages and a linear layer (in the spirit of LeNet-5, LeCun et
al. 1998), trained with Adam on the training digits, each shifted by up to 2 pixels. Writes
``bench/weights/digit-classifier.safetensors`` and prints the accuracy on the held-out digits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from catdiff.data.digits import Digits
from catdiff.data.image_folder import uint8_to_float

WEIGHTS = Path(__file__).parent / "weights" / "digit-classifier.safetensors"


def digit_classifier() -> nn.Sequential:
    """Images ``[N, 1, 32, 32]`` in [-1, 1] -> logits ``[N, 10]``."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 10),
    )  # fmt: skip


def load_digit_classifier(path: Path = WEIGHTS) -> nn.Sequential:
    model = digit_classifier()
    model.load_state_dict(load_file(path))
    return model.eval()


@torch.inference_mode()
def predict(model: nn.Module, images: Tensor) -> Tensor:
    """The class of each image (float ``[N, 1, 32, 32]`` in [-1, 1])."""
    return torch.cat([model(batch).argmax(dim=1) for batch in images.split(256)])


def random_shift(images: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Each image moved by up to ``max_shift`` pixels in x and y (zero padding: the background)."""
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, len(images)), generator=generator)
    size = images.shape[-1]
    return torch.stack([p[:, y : y + size, x : x + size] for p, y, x in zip(padded, dy, dx, strict=True)])


def train(digits: Digits, *, epochs: int = 6, batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = digit_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    images = uint8_to_float(digits.images)
    for _ in range(epochs):
        for batch in torch.randperm(len(digits), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(random_shift(images[batch], generator)), digits.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", type=Path, help="digits folder to train on")
    parser.add_argument("heldout", type=Path, help="digits folder to measure the accuracy on")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    model = train(Digits.from_folder(args.train), epochs=args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), args.out)
    heldout = Digits.from_folder(args.heldout)
    accuracy = (predict(model, uint8_to_float(heldout.images)) == heldout.labels).float().mean().item()
    print(f"held-out accuracy {accuracy:.2%} on {len(heldout)} digits; wrote {args.out}")


if __name__ == "__main__":
    main()
