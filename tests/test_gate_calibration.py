"""The gate's calibration on small forget sets (issue 25), as measured in benchmarks/gate_calibration.csv.

The benchmark itself trains hundreds of models (about an hour on 2 cores), so it is not run here; these tests
check that the committed measurements cover 20 seeds per forget-set size, that they meet the calibration targets
the README states, and that RESULTS.md quotes the table ``gate_calibration.py --summary`` prints from them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gate_calibration as calibration  # noqa: E402

CSV = ROOT / "benchmarks" / "gate_calibration.csv"
MEASURED = pd.read_csv(CSV)
KEYS = ["setting", "seed", "size", "method", "reference"]


def _refused(method: str, reference: str, setting: str | None = None) -> pd.DataFrame:
    rows = MEASURED[(MEASURED["method"] == method) & (MEASURED["reference"] == reference)]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    return (rows.assign(refused=rows["verdict"] == "failed").groupby(["setting", "size"])["refused"]
            .agg(["mean", "size"]))


def test_every_cell_has_twenty_seeds_and_no_duplicate_run():
    assert not MEASURED.duplicated(KEYS).any()
    runs = MEASURED.groupby(["setting", "method", "reference", "size"])["seed"].nunique()
    assert set(MEASURED["size"]) == set(calibration.SIZES)
    assert runs.min() >= 20, runs[runs < 20]


def test_exact_retraining_is_refused_in_at_most_five_percent_of_runs():
    # with the reference: at every size; without: over each setting's 80 runs (a 2.5% test refuses 2 of 20 runs at
    # one size with probability 9%; RESULTS.md records where that happened)
    assert (_refused("retrain", "retrain")["mean"] <= 0.05).all()
    blind = MEASURED[(MEASURED["method"] == "retrain") & (MEASURED["reference"] == "none")]
    overall = (blind["verdict"] == "failed").groupby(blind["setting"]).mean()
    assert (overall <= 0.05).all(), overall
    assert (_refused("retrain", "none")["mean"] <= 0.10).all()


def test_a_no_op_on_the_memorising_model_is_refused_against_the_reference():
    rates = _refused("noop", "retrain", "random-labels-mlp")
    assert (rates["mean"] >= 0.95).all(), rates
    rows = MEASURED[(MEASURED["method"] == "noop") & (MEASURED["reference"] == "retrain")
                    & (MEASURED["setting"] == "random-labels-mlp") & (MEASURED["verdict"] == "passed")]
    assert (rows["evidence"] == "none").all()  # a run it passed claimed no proof


def test_without_a_reference_a_no_op_is_refused_or_claims_no_evidence():
    # one memorised sample against ~120 same-class non-members, some of which the model also fits by chance (random
    # labels): the unpaired test cannot always tell; the gate then says "nothing measurable", never "proved"
    rows = MEASURED[(MEASURED["method"] == "noop") & (MEASURED["reference"] == "none")
                    & (MEASURED["setting"] == "random-labels-mlp")]
    passed = rows[rows["verdict"] == "passed"]
    assert (passed["evidence"] == "none").all(), passed[KEYS + ["evidence"]]
    assert (rows[rows["size"] >= 12]["verdict"] == "failed").mean() >= 0.95


def test_results_md_quotes_the_summary_of_the_committed_csv():
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert calibration.summary(MEASURED) in results, (
        "benchmarks/RESULTS.md's gate calibration table differs from "
        "`python benchmarks/gate_calibration.py --summary --out benchmarks/gate_calibration.csv`")


def test_summary_counts_refusals_and_unmeasured_passes():
    frame = pd.DataFrame({
        "setting": ["s"] * 3, "seed": [0, 1, 2], "size": [1] * 3, "method": ["noop"] * 3, "reference": ["none"] * 3,
        "verdict": ["failed", "failed", "passed"], "evidence": ["measured", "measured", "none"],
        "membership_passed": [False, True, None]})
    table = calibration.summary(frame).splitlines()
    assert table[0] == "| setting | method | reference | 1 ID |"
    assert table[2] == "| s | noop | none | 2/3 (m 1, n 1) |"
