"""Where NITC's CPU time goes, as a fraction of the retrain reference's CPU time, on tuning cells (seeds >= 100).

Each part is timed by wrapping its function in the module that calls it (process CPU time, so the machine's other
load disturbs it little); the mean over ``--repeats`` runs after one warm-up run is printed per cell. The originals
and references come from the cache that ``run.py`` writes (see ``tune.py``)::

    python benchmarks/profile_nitc.py --cache-dir /tmp/tune/.cache --cells digits:A:100,mnist5k:B-mem:100
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

import mlflow_unlearn.methods.nitc as nitc_module
import mlflow_unlearn.methods.registry as registry_module
import mlflow_unlearn.methods.unsir as unsir_module
from mlflow_unlearn.methods import run_method

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402
import tune  # noqa: E402

PARTS = {  # label -> (module, function name); the parts do not nest
    "impaired teacher (UNSIR impair and repair)": (nitc_module, "impaired_teacher"),
    "targets and curriculum scores (forward passes)": (nitc_module, "predict_logits"),
    "features below the re-initialised layers (sample-wise)": (nitc_module, "classifier_inputs"),
    "re-initialised layers trained (sample-wise)": (nitc_module, "fit"),
    "distillation (class-wise)": (nitc_module, "distill"),
    "collapse check (run_method)": (registry_module, "check_not_collapsed"),
}
SUBPARTS = {  # label -> (module, function name); each nests in a part above and is not subtracted from "rest"
    "  of which: error-maximising noise": (unsir_module, "learn_error_max_noise"),
    "  of which: impair and repair epochs": (unsir_module, "fit"),
    "  of which: the input range (one pass)": (unsir_module, "value_range"),
    "  curriculum order (scores, sort, stages)": (nitc_module, "staged_subsets"),
    "  new classifier (features and its training)": (nitc_module, "distill_new_head"),
    "  layers below it forget (forget_below_head)": (nitc_module, "forget_below_head"),
}


def timed_parts() -> tuple[dict[str, float], list]:
    """Wrap every part; returns the accumulator and the originals to restore."""
    spent: dict[str, float] = collections.defaultdict(float)
    saved = []
    for label, (module, name) in {**PARTS, **SUBPARTS}.items():
        real = getattr(module, name)
        saved.append((module, name, real))

        @functools.wraps(real)
        def wrapper(*args, _real=real, _label=label, **kwargs):
            start = time.process_time()
            try:
                return _real(*args, **kwargs)
            finally:
                spent[_label] += time.process_time() - start

        setattr(module, name, wrapper)
    return spent, saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", required=True, help="comma-separated dataset:task:seed (seeds >= 100)")
    parser.add_argument("--cache-dir", default="/tmp/tune/.cache", help="the cache that run.py wrote")
    parser.add_argument("--model", default=bench.DEFAULT_MODEL, help="architecture of the cached originals")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (after one warm-up run)")
    parser.add_argument("--config", default="{}", help="nitc config overrides as JSON")
    args = parser.parse_args(argv)
    import json

    torch.set_num_threads(1)
    config = json.loads(args.config)
    cache = bench.ModelCache(Path(args.cache_dir))
    rows = []
    for dataset, task, seed in (tune.parse_cell(c) for c in args.cells.split(",")):
        fsplit, nonmember, original, _, ref_cpu = tune.load_cell(cache, dataset, task, seed, None, args.model)
        unlearn = functools.partial(run_method, "nitc", original, forget=fsplit.forget, retain=fsplit.retain,
                                    config=config, device="cpu", forget_kind=fsplit.kind,
                                    forget_classes=fsplit.forget_classes, seed=seed, nonmember=nonmember)
        unlearn()
        spent, saved = timed_parts()
        try:
            total = 0.0
            for _ in range(args.repeats):
                with bench.settled_heap():
                    start = time.process_time()
                    unlearn()
                    total += time.process_time() - start
        finally:
            for module, name, real in saved:
                setattr(module, name, real)
        row = {"cell": f"{dataset}:{task}:{seed}", "model": args.model, "nitc": total / args.repeats / ref_cpu}
        row.update({label: value / args.repeats / ref_cpu for label, value in spent.items()})
        row["rest"] = row["nitc"] - sum(spent[label] for label in PARTS) / args.repeats / ref_cpu
        rows.append(row)
    frame = pd.DataFrame(rows).set_index(["cell", "model"]).T
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(frame.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
