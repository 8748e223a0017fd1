"""Whom the sample-wise impaired teacher forgets: NITC's UNSIR-impaired teacher against the retrain reference
on the forget, retain and test samples (task B, forget a random 10%).

A model retrained without the forget samples treats them like unseen data: its loss on them is several times
its loss on the retain samples. This script asks whether the teacher that NITC distils the forget samples from
does the same, at the default sample-wise impair strength (``sample_impair_scale``) and at stronger ones. For
each cell it trains an original and a retrain reference (as ``head_share.py`` does), builds
:func:`mlflow_unlearn.methods.nitc.impaired_teacher` from the original at every scale, and reports accuracy and
mean cross-entropy on each split and the ratio ``forget_loss / retain_loss`` (1 = no preference for the forget
samples)::

    python benchmarks/teacher_selectivity.py --seeds 0,1,2 --out benchmarks/results_teacher_selectivity.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods.nitc import NitcConfig, impaired_teacher
from mlflow_unlearn.methods.registry import UnlearnContext
from mlflow_unlearn.metrics import accuracy, collect_split_outputs, per_sample_loss
from mlflow_unlearn.metrics.evaluate import SPLITS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_share import train_cell  # noqa: E402


def split_scores(outputs) -> dict[str, float]:
    """Accuracy (percent) and mean cross-entropy on the forget, retain and test samples, from one model's
    :func:`~mlflow_unlearn.metrics.collect_split_outputs` entry."""
    scores = {}
    for name in SPLITS:
        logits, labels = outputs[name]
        scores[f"{name}_accuracy"] = accuracy(logits, labels) * 100
        scores[f"{name}_loss"] = per_sample_loss(logits, labels).mean().item()
    scores["forget_retain_loss_ratio"] = scores["forget_loss"] / scores["retain_loss"]
    return scores


def run_cell(dataset: str, model_name: str, seed: int, scales: Sequence[float],
             epochs: int | None = None) -> list[dict]:
    fsplit, num_classes, _, original, reference, _ = train_cell(dataset, model_name, seed, epochs)
    forget_x, forget_y = fsplit.forget.to_tensors()
    context = UnlearnContext(device=torch.device("cpu"), num_classes=num_classes, forget_kind="sample",
                             seed=seed)
    models = {"original": original, "retrain": reference}
    scale_of = {}
    for scale in scales:
        label = f"teacher@{scale}"
        rt.seed_everything(seed)
        models[label] = impaired_teacher(original, forget_labels=forget_y, retain=fsplit.retain,
                                         input_shape=tuple(forget_x.shape[1:]),
                                         config=NitcConfig(sample_impair_scale=scale), context=context,
                                         history=rt.History())
        scale_of[label] = scale
    outputs = collect_split_outputs(models, fsplit, device="cpu")
    return [{"dataset": dataset, "model": model_name, "seed": seed,
             "which": "teacher" if label in scale_of else label, "scale": scale_of.get(label, float("nan")),
             **split_scores(outputs[label])}
            for label in models]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--models", default="smallcnn,mlp")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scales", default=f"{NitcConfig.sample_impair_scale},0.1,0.2,0.5,1.0",
                        help="sample_impair_scale values of the teacher (the first is NITC's default)")
    parser.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs of the recipe")
    parser.add_argument("--out", default=None, help="CSV of every cell (default: print only)")
    args = parser.parse_args(argv)
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        parser.error(f"--scales must be comma-separated numbers, got {args.scales!r}")
    if not scales or any(s <= 0 for s in scales):
        parser.error(f"--scales must be positive, got {args.scales!r}")
    torch.set_num_threads(1)
    rows = [row for model_name in args.models.split(",") for seed in map(int, args.seeds.split(","))
            for row in run_cell(args.dataset, model_name, seed, scales, args.epochs)]
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    summary = (frame.fillna({"scale": 0.0}).drop(columns=["dataset", "seed"])
               .groupby(["model", "which", "scale"], sort=False).mean())
    with pd.option_context("display.width", 200):
        print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
