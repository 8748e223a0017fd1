"""The spread of the noise floor: several retrains with other seeds per cell, each scored against the reference
like a method (Avg Gap and the product's gate), so that a method's Avg Gap and gate passes can be read against what
exact unlearning itself scores.

``run.py`` trains one such retrain per cell and seed (``retrain_reseeded``, seed offset ``FLOOR_SEED_OFFSET``);
this script runs ``run.py`` again with the offsets ``k * FLOOR_SEED_OFFSET``, ``k = 1..--replicas``, on the same
cached originals and references (``k = 1`` is the committed row), and writes one row per cell, seed and replica::

    python benchmarks/floor_spread.py --datasets digits --models smallcnn,mlp --tasks B-mem --seeds 0,1,2 \\
        --cache-dir /tmp/bench/.cache --replicas 6 --out benchmarks/results_floor_spread.csv

Without the cache, ``run.py`` trains the originals and references first (the same seeded recipes as the
benchmark's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

COLUMNS = ["dataset", "model", "task", "seed", "replica", "seed_offset", "avg_gap", "forget_accuracy",
           "retain_accuracy", "test_accuracy", "mia_efficacy", "gate_verdict", "gate_failures", "code_version"]
DRAWS = 20_000
"""Draws of :func:`three_seed_means`."""


def replica_rows(argv: list[str], replica: int) -> pd.DataFrame:
    """The ``retrain_reseeded`` rows of one ``run.py`` call with the seed offset of ``replica``."""
    offset = replica * bench.FLOOR_SEED_OFFSET
    saved = bench.FLOOR_SEED_OFFSET
    with tempfile.TemporaryDirectory() as out:
        bench.FLOOR_SEED_OFFSET = offset
        try:
            status = bench.main([*argv, "--methods", bench.FLOOR, "--no-retime", "--out-dir", out])
        finally:
            bench.FLOOR_SEED_OFFSET = saved
        if status:
            raise SystemExit(f"run.py failed for replica {replica} (status {status})")
        rows = pd.read_csv(Path(out) / bench.RESULTS_CSV)
    rows = rows[rows["method"] == bench.FLOOR].assign(replica=replica, seed_offset=offset)
    return rows.reindex(columns=COLUMNS)


def three_seed_means(group: pd.DataFrame, draws: int = DRAWS) -> np.ndarray:
    """Means of ``group``'s Avg Gap over its seeds, one replica drawn per seed (seeded): the spread of the mean that a
    method's rows over the same seeds are read against (RESULTS.md quotes its 95th percentile)."""
    rng = np.random.default_rng(0)
    per_seed = [part["avg_gap"].to_numpy() for _, part in group.groupby("seed")]
    return np.mean([rng.choice(values, size=draws) for values in per_seed], axis=0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits")
    parser.add_argument("--models", default=bench.DEFAULT_MODEL)
    parser.add_argument("--tasks", default="B-mem")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--replicas", type=int, default=6, help="retrains with other seeds per cell and seed")
    parser.add_argument("--cache-dir", required=True, help="run.py's cache of originals and references")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (appends to an existing one)")
    parser.add_argument("--quick", action="store_true", help="run.py's --quick (2-epoch recipes: a smoke test)")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    common = ["--datasets", args.datasets, "--models", args.models, "--tasks", args.tasks, "--seeds", args.seeds,
              "--cache-dir", args.cache_dir, *(["--quick"] if args.quick else [])]
    frames = [replica_rows(common, replica) for replica in range(1, args.replicas + 1)]
    if args.out.exists():
        frames.insert(0, pd.read_csv(args.out))
    key = ["dataset", "model", "task", "seed", "replica"]
    result = pd.concat(frames, ignore_index=True).drop_duplicates(subset=key, keep="last").sort_values(key)
    result.to_csv(args.out, index=False)
    summary = pd.DataFrame({cell: {"runs": len(group), "mean": group["avg_gap"].mean(),
                                   "3-seed p95": float(np.quantile(three_seed_means(group), 0.95)),
                                   "gate passed": f"{(group['gate_verdict'] == 'passed').sum()} of {len(group)}"}
                            for cell, group in result.groupby(["dataset", "model", "task"])}).T
    print(summary.to_string(float_format="{:.2f}".format))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
