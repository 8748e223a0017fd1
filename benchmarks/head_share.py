"""How much `eu_k` owes to the architecture: `eu_k` against `nitc` when the retrained classifier is a large or a
small share of the weights (task B, forget a random 10%).

`run.py` benchmarks `smallcnn`, whose two-layer head holds ~88% of the weights; this script adds `mlp`
(784-256-256-10 on mnist5k), whose classifier is its last linear layer (``net.5``, ~1% of the weights on
28x28 inputs). Each cell trains an original and a retrain reference with the default recipe, runs both methods
with their defaults (``eu_k``'s ``module`` set per model) and scores them with :func:`evaluate`::

    python benchmarks/head_share.py --seeds 0,1,2 --out benchmarks/results_eu_k_head_share.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import pandas as pd
import torch

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import ForgetSplit, load_data, resolve_forget
from mlflow_unlearn.methods import run_method
from mlflow_unlearn.metrics import evaluate
from mlflow_unlearn.models import create_model
from mlflow_unlearn.training import TrainConfig, train

CLASSIFIER = {"smallcnn": "head", "mlp": "net.5"}
METHODS = ("nitc", "eu_k")


class Cell(NamedTuple):
    """One task-B cell: the forget split, a fresh-model factory, the original and its retrain reference."""

    fsplit: ForgetSplit
    num_classes: int
    fresh: Callable[[], torch.nn.Module]
    original: torch.nn.Module
    reference: torch.nn.Module
    retrain_time_s: float


def train_cell(dataset: str, model_name: str, seed: int, epochs: int | None = None) -> Cell:
    """Forget a random 10% of ``dataset``; train the original and the retrain reference with the default recipe."""
    split = load_data(dataset, seed=seed)
    fsplit = resolve_forget(split, f"random:0.1:{seed}")

    def fresh() -> torch.nn.Module:
        return create_model(model_name, in_channels=split.train.in_channels, num_classes=split.num_classes,
                            input_size=split.train.input_size)

    recipe = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    rt.seed_everything(seed)
    original = train(fresh(), split.train, recipe, device="cpu")[0]
    reference = run_method("retrain", fresh(), forget=fsplit.forget, retain=fsplit.retain, device="cpu",
                           config=recipe.to_dict(), seed=seed)
    return Cell(fsplit, split.num_classes, fresh, original.eval(), reference.model.eval(),
                reference.history.wall_time_s)


def run_cell(dataset: str, model_name: str, seed: int, epochs: int | None = None) -> list[dict]:
    fsplit, _, fresh, original, reference, retrain_time = train_cell(dataset, model_name, seed, epochs)
    models = {"original": original, "retrain": reference}
    times = {"retrain": retrain_time}
    for method in METHODS:
        config = {"module": CLASSIFIER[model_name]} if method == "eu_k" else None
        result = run_method(method, original, forget=fsplit.forget, retain=fsplit.retain, device="cpu",
                            forget_kind=fsplit.kind, config=config, seed=seed)
        models[method], times[method] = result.model, result.history.wall_time_s
        if method == "eu_k":
            share = result.history.extra["module_weight_fraction"]
    rt.seed_everything(seed)
    table = evaluate(models, fsplit, reference="retrain", incompetent=fresh().eval(), device="cpu", seed=seed)
    return [{"dataset": dataset, "model": model_name, "seed": seed, "method": name,
             "eu_k_weight_share": share, "avg_gap": row["avg_gap"], "forget_accuracy": row["forget_accuracy"],
             "retain_accuracy": row["retain_accuracy"], "test_accuracy": row["test_accuracy"],
             "mia_efficacy": row["mia_efficacy"], "time_fraction": times.get(name, float("nan")) / times["retrain"]}
            for name, row in table.iterrows()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--models", default="smallcnn,mlp")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs of the recipe")
    parser.add_argument("--out", default=None, help="CSV of every cell (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [row for model_name in args.models.split(",") for seed in map(int, args.seeds.split(","))
            for row in run_cell(args.dataset, model_name, seed, args.epochs)]
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    summary = frame.drop(columns=["dataset", "seed"]).groupby(["model", "method"], sort=False).agg(["mean", "std"])
    with pd.option_context("display.width", 200):
        print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
