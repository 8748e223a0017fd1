"""Compare config variants of unlearning methods on tuning cells (seeds >= 100 only), scored like ``run.py``.

The originals and retrain references come from the cache that ``run.py`` writes, so build it first::

    python benchmarks/run.py --datasets mnist5k,digits --tasks A,B --seeds 100,101 --methods nitc --out-dir /tmp/tune
    python benchmarks/tune.py --cache-dir /tmp/tune/.cache \\
        'defaults:nitc:' 'two-stages:nitc:{"num_stages": 2}' 'rl:random_label:'

Each variant is ``label:method:json-config`` (an empty config means the method's defaults). Every variant
runs on every cell (``dataset:task:seed``) from the same original; the table gives per-cell and mean Avg Gap,
forget / retain / test accuracy, MIA-efficacy, the product's gate verdict (reference ``retrain``; the failed checks
by name; ``passed`` is the share of cells that pass) and the CPU time as a fraction of the reference's (measured in
this process, so only comparable between variants of one call). Seeds below 100 are refused: they are the
reported ones. ``--model`` picks the architecture of the cached originals (default ``smallcnn``; it must be one
that ``run.py --models`` built).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.assess import assess
from mlflow_unlearn.data import load_data
from mlflow_unlearn.data.nonmember import hold_out_nonmembers
from mlflow_unlearn.methods import run_method
from mlflow_unlearn.training import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

DEFAULT_CELLS = ",".join(f"{dataset}:{task}:{seed}" for task in "AB" for dataset in ("mnist5k", "digits")
                         for seed in (100, 101))


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``label:method:json`` -> ``(label, method, config)``."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise SystemExit(f"Bad variant {text!r}: expected label:method:json-config (the config may be empty)")
    try:
        config = json.loads(parts[2]) if parts[2].strip() else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"Bad config in variant {text!r}: {exc}") from None
    return parts[0], parts[1], config


def parse_cell(text: str) -> tuple[str, str, int]:
    """``dataset:task:seed`` -> its parts; refuses the reported seeds (< 100)."""
    try:
        dataset, task, seed = text.split(":")
        seed_value = int(seed)
    except ValueError:
        raise SystemExit(f"Bad cell {text!r}: expected dataset:task:seed, e.g. mnist5k:A:100") from None
    if task not in bench.TASKS:
        raise SystemExit(f"Bad cell {text!r}: task must be one of {', '.join(bench.TASKS)}")
    if seed_value < bench.TUNING_SEEDS_FROM:
        raise SystemExit(f"Seed {seed_value} is a reported seed; tune on seeds >= {bench.TUNING_SEEDS_FROM}")
    return dataset, task, seed_value


def load_cell(cache: bench.ModelCache, dataset: str, task: str, seed: int, epochs: int | None = None,
              model: str = bench.DEFAULT_MODEL):
    """The forget split (its test side without the non-members), the non-members, the original and retrain reference
    (eval mode, architecture ``model``) and the reference's CPU time."""
    dev = torch.device("cpu")
    task_epochs = epochs or bench.TASKS[task].epochs
    recipe = TrainConfig(seed=seed) if task_epochs is None else TrainConfig(epochs=task_epochs, seed=seed)
    split, fsplit, _ = bench.task_data(load_data(dataset, seed=seed), bench.TASKS[task], seed)
    fsplit, nonmember = hold_out_nonmembers(fsplit, seed=seed, split=split)
    original = bench.create_model(model, in_channels=split.train.in_channels, num_classes=split.num_classes,
                                  input_size=split.train.input_size)
    key = {**bench.original_key(dataset, model, seed, recipe, dev), **bench.TASKS[task].variant}
    spec = fsplit.spec
    ref_cfg = bench.method_config(bench.REFERENCE, recipe, {}, False)
    reference = bench.fresh_model(fsplit, model)
    ref_measured = cache.load(reference, **bench.retrain_key(key, bench.REFERENCE, spec, ref_cfg))
    if cache.load(original, **key) is None or ref_measured is None:
        raise SystemExit(f"No cached original/reference for {dataset}:{task}:{seed} ({model}) in {cache.root}; build "
                         f"them with run.py --datasets {dataset} --models {model} --tasks {task} --seeds {seed} "
                         "--out-dir <dir> first")
    return fsplit, nonmember, original.eval(), reference.eval(), ref_measured["cpu_time_s"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="label:method:json-config")
    parser.add_argument("--cells", default=DEFAULT_CELLS, help="comma-separated dataset:task:seed (seeds >= 100)")
    parser.add_argument("--cache-dir", default="/tmp/tune/.cache", help="the cache that run.py wrote")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of the cached originals, as given to run.py (--quick: 2)")
    parser.add_argument("--model", default=bench.DEFAULT_MODEL,
                        help=f"architecture of the cached originals, as given to run.py --models; one of: "
                             f"{', '.join(bench.list_models())}")
    args = parser.parse_args(argv)
    if args.model not in bench.list_models():
        raise SystemExit(f"Unknown model {args.model!r}; registered: {', '.join(bench.list_models())}")
    torch.set_num_threads(1)
    variants = [parse_variant(v) for v in args.variants]
    cells = [parse_cell(c) for c in args.cells.split(",")]
    cache = bench.ModelCache(Path(args.cache_dir))
    rows = []
    warmed: set[tuple[str, str]] = set()
    for dataset, task, seed in cells:
        fsplit, nonmember, original, reference, ref_cpu = load_cell(cache, dataset, task, seed, args.epochs,
                                                                    args.model)
        models = {bench.ORIGINAL: original, bench.REFERENCE: reference}
        cpu_fraction = {}
        for label, method, config in variants:
            unlearn = functools.partial(run_method, method, original, forget=fsplit.forget, retain=fsplit.retain,
                                        config=config, device="cpu", forget_kind=fsplit.kind,
                                        forget_classes=fsplit.forget_classes, seed=seed, nonmember=nonmember)
            if (dataset, method) not in warmed:
                # One untimed run per method and data set: one-time costs (thread pools, kernel selection, the
                # first call of each op) would otherwise be charged to whichever variant runs first.
                unlearn()
                warmed.add((dataset, method))
            with bench.settled_heap():
                start = time.process_time()
                result = unlearn()
                cpu_fraction[label] = (time.process_time() - start) / ref_cpu
            models[label] = result.model.eval()
        rt.seed_everything(seed)
        # scored and judged as run.py does: the metrics and the product's gate (reference retrain) per variant
        assessment = assess(models, fsplit, original=bench.ORIGINAL, reference=bench.REFERENCE,
                            incompetent=bench.fresh_model(fsplit, args.model).eval(), candidates=list(cpu_fraction),
                            device="cpu", seed=seed)
        for name, metrics in assessment.metrics.iterrows():
            verdict = assessment.verdicts.get(name)  # None for the original and the reference
            gate = "" if verdict is None else verdict.verdict
            if gate == "failed":  # the failed checks by name
                gate = ",".join(failure.split(":", 1)[0] for failure in verdict.failures())
            rows.append({"task": task, "cell": f"{dataset}:{task}:{seed}", "model": name, "avg_gap": metrics["avg_gap"],
                         "forget": metrics["forget_accuracy"], "retain": metrics["retain_accuracy"],
                         "test": metrics["test_accuracy"], "mia": metrics["mia_efficacy"],
                         "cpu_fraction": cpu_fraction.get(name, float("nan")), "gate": gate,
                         "passed": float(gate == "passed") if verdict is not None else float("nan")})
    frame = pd.DataFrame(rows)
    with pd.option_context("display.width", 200):
        print(frame.round(3).to_string(index=False))
        print(frame.groupby(["task", "model"], sort=False).mean(numeric_only=True).round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
