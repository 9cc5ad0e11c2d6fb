"""Train a small diffusion model on a folder of images, then sample it: catdiff as a library.

    python examples/train_folder.py FOLDER RUN --seconds 60

Pixel space at 16 px with a 1.1M-parameter U-Net, so that a minute on a CPU shows the idea;
``catdiff train FOLDER --out RUN --time 30m`` is the full recipe (TAESD latents, EMA,
augmentation, evaluation). The run folder is a model: ``catdiff generate --model RUN``.
"""

import argparse
from pathlib import Path

import catdiff

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", type=Path)
parser.add_argument("run", type=Path)
parser.add_argument("--seconds", type=float, default=60.0)
args = parser.parse_args()

data = catdiff.open_training_data(args.folder, size=16)  # uint8 images, resized and centre-cropped
unet = {"type": "unet", "in_channels": 3, "out_channels": 3, "base_channels": 32, "channel_mult": [1, 2], "attention_levels": [1]}  # fmt: skip
config = catdiff.TrainConfig(
    model=unet, batch_size=16, lr=1e-3, warmup_steps=20, time_budget=args.seconds, preview_every=0
)
trainer = catdiff.Trainer(config, data.data, args.run, data_info=data.info)
trainer.fit()  # ends with a checkpoint in RUN/checkpoints; --resume-able like `catdiff train`

pipeline = catdiff.Pipeline.from_folder(args.run)  # the newest checkpoint's EMA weights
catdiff.save_grid(pipeline.sample(16, seed=0), args.run / "samples.png")
print(f"trained {trainer.step} steps; 16 samples in {args.run / 'samples.png'}")
