"""Does a scorer rank samples the way a person would? ROC AUC against a person's labels.

    python bench/scorer_agreement.py grid --model cats --n 64 --seed 1 --out docs/img/scorer-agreement-seed1.png
    # a person views the numbered grid and writes the indices of the good cats to a JSON list
    python bench/scorer_agreement.py auc --model cats --n 64 --seed 1 --labels bench/labels/cats-seed1.json

``grid`` writes the samples (numbered 0.. row by row) without their scores, so the person who
labels them is blind to the scorer. ``auc`` samples the same images again (same seed), scores
them and prints the ROC AUC of the scores for "good" against the rest (0.5 is chance), with a
one-sided permutation p-value (Mann & Whitney 1947; Hanley & McNeil 1982 for AUC = U / (n1 n0)).

The labels in ``bench/labels/`` were made before catdiff drew each image from its own seed: those
64 images come from one generator shared by the whole batch. ``--shared-generator`` draws them
that way again (the same generator handed to every image, in order), so the labels still fit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from catdiff.images import save_grid
from catdiff.pipeline import Pipeline, pipeline_folder
from catdiff.rerank import SCORERS, load_scorer


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def permutation_p_value(scores: torch.Tensor, positive: torch.Tensor, *, trials: int = 10000, seed: int = 0) -> float:
    """One-sided p-value of the AUC under random labels with the same number of positives."""
    observed = roc_auc(scores, positive)
    generator = torch.Generator().manual_seed(seed)
    hits = sum(
        roc_auc(scores, positive[torch.randperm(len(positive), generator=generator)]) >= observed for _ in range(trials)
    )
    return (hits + 1) / (trials + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["grid", "auc"])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, help="default: the model's")
    parser.add_argument("--sampler", help="default: the model's")
    parser.add_argument("--spacing", help="default: the model's")
    parser.add_argument("--out", type=Path, help="grid: where to write the PNG")
    parser.add_argument("--labels", type=Path, help="auc: JSON list of the indices a person picked as good")
    parser.add_argument("--scorers", nargs="+", default=["eigen", "realism", "typicality"], choices=SCORERS)
    parser.add_argument("--clip-model", type=Path)
    parser.add_argument("--precision", default="fp32", help="fp32 (default) draws the same images on every CPU")
    parser.add_argument("--shared-generator", action="store_true", help="one generator for the batch (bench/labels/)")
    args = parser.parse_args()

    folder = pipeline_folder(args.model)
    pipeline = Pipeline.from_folder(folder)
    options = {"steps": args.steps, "sampler": args.sampler, "spacing": args.spacing, "precision": args.precision}
    if args.shared_generator:
        images = pipeline.sample_batch([torch.Generator().manual_seed(args.seed)] * args.n, **options)
    else:
        images = pipeline.sample(args.n, seed=args.seed, batch_size=args.n, **options)
    if args.task == "grid":
        print(f"wrote {save_grid(images, args.out or Path(f'agreement-seed{args.seed}.png'), nrow=8)}")
        return
    good = torch.zeros(args.n, dtype=torch.bool)
    good[json.loads(args.labels.read_text())] = True
    print(f"{int(good.sum())} of {args.n} samples labelled good by a person\n")
    print("| scorer | ROC AUC (0.5 = chance) | permutation p-value |")
    print("|---|---|---|")
    for kind in args.scorers:
        scores = load_scorer(kind, pipeline=folder, clip_model=args.clip_model)(images)
        print(f"| {kind} | {roc_auc(scores, good):.3f} | {permutation_p_value(scores, good):.4f} |")


if __name__ == "__main__":
    main()
