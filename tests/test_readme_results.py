"""The README's benchmark numbers and benchmarks/RESULTS.md agree with benchmarks/results.csv.

The README's benchmark tables and its honest status (one line per target and cell) are generated blocks, and
RESULTS.md is generated around its hand-written discussion; both are written by ``benchmarks/run.py`` from the CSV.
These tests regenerate them from the committed CSV and compare: a number edited by hand, or a CSV re-run without
regenerating the documents, fails here.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as bench  # noqa: E402

RESULTS = bench.read_results(ROOT / "benchmarks" / bench.RESULTS_CSV)


def test_the_readme_benchmark_blocks_match_results_csv() -> None:
    assert bench.check_readme(ROOT / "README.md", RESULTS) == []


def test_results_md_is_what_run_py_writes_from_results_csv(tmp_path: Path) -> None:
    committed = ROOT / "benchmarks" / bench.RESULTS_MD
    regenerated = tmp_path / bench.RESULTS_MD
    shutil.copy(committed, regenerated)  # the hand-written discussion and the GPU section are kept from it
    bench.write_markdown(RESULTS, regenerated)
    assert regenerated.read_text() == committed.read_text(), (
        "benchmarks/RESULTS.md differs from what results.csv gives; run python benchmarks/run.py --report-only")
