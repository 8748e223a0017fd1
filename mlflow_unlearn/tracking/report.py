"""The audit report of one unlearning run: ``unlearning_report.json``, ``unlearning_report.md`` and plots.

The report leads with the evidence in plain words (what was tested, the numbers and their interval, what
they mean: :func:`evidence`), then states the parent version, the method and its resolved config, the forget
set as digest and count only, the metrics of every model, the gate's checks and verdict, the code version and
timestamps. It never contains a sample or a sample ID. Plots are drawn with matplotlib's object API (no
``pyplot`` state is touched): accuracy per split for each model, and per-sample loss histograms of the forget
set against the non-members of its classes (the membership test's two samples) for each model.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlflow_unlearn._version import __version__
from mlflow_unlearn.assess.gate import EVIDENCE_NONE, EVIDENCE_NOT_TESTED, MEMBERSHIP_COLUMNS
from mlflow_unlearn.tracking.disclosure import Disclosure
from mlflow_unlearn.tracking.formats import ONNX_TOLERANCE
from mlflow_unlearn.tracking.vocabulary import CLASS_FORGETTING

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_unlearn.assess.gate import GateResult
    from mlflow_unlearn.tracking.plan import UnlearnPlan

REPORT_ARTIFACT_PATH = "report"
JSON_REPORT = "unlearning_report.json"
MD_REPORT = "unlearning_report.md"
ACCURACY_PLOT = "accuracy_per_split.png"
LOSS_PLOT = "loss_histograms.png"
REPORT_SCHEMA_VERSION = 1

_SPLITS = ("forget", "retain", "test")
_LOSS_LABELS = {"forget": "forget set", "heldout": "non-members, same classes"}


@dataclass
class RunResult:
    """What one unlearning run produced, as far as the report tells it (filled in step by step).

    Args:
        run_id: the run.
        started_at: when :func:`~mlflow_unlearn.tracking.api.unlearn` started (ISO-8601 UTC).
        metrics: the metrics table (percent).
        losses: per-sample losses for the histograms, ``{model: {"forget"|"heldout": losses}}``.
        retain_evaluated: how many retain samples were evaluated.
        version: the registered version, or None.
        forced: registered although the gate failed.
        onnx_diff: the ONNX copy's max abs logit difference, if one was logged.
        artifact_digest: SHA-256 of the logged model's files (its provenance record binds it).
        disclosure: which figures of the forget set the records withhold.
        timings: seconds per step.
    """

    run_id: str
    started_at: str
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    losses: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict, repr=False)
    retain_evaluated: int = 0
    version: ModelVersion | None = None
    forced: bool = False
    onnx_diff: float | None = None
    artifact_digest: str = ""
    disclosure: Disclosure = field(default_factory=Disclosure)
    timings: dict[str, float] = field(default_factory=dict)


def build_report(plan: UnlearnPlan, result: RunResult, verdict: GateResult) -> dict[str, Any]:
    """The audit report of one unlearning run, as the dict written to ``unlearning_report.json``.

    Args:
        plan: what was asked and checked (parent, method, config, data, forget set as digest and count).
        result: what the run produced.
        verdict: the acceptance gate's decision.

    Returns:
        The report (schema :data:`REPORT_SCHEMA_VERSION`); no sample and no sample ID is in it.
    """
    fs, lineage, version = plan.forget, plan.lineage, result.version
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run_id": result.run_id,
        "started_at": result.started_at,
        "finished_at": utc_now(),
        "parent": {"name": plan.parent.name, "version": str(plan.parent.version), "uri": plan.model_uri,
                   "run_id": plan.parent.run_id},
        "result": {"name": version.name, "version": str(version.version)} if version is not None else None,
        "method": plan.method,
        "config": plan.config_dict,
        "config_hash": plan.config_hash,
        "seed": plan.seed,
        "device": str(plan.device),
        "reference": plan.reference,
        "data": {"source": lineage.source, "seed": lineage.seed, "test_fraction": lineage.test_fraction,
                 "forget_steps_before": len(lineage.chain), "retain_count": len(fs.retain),
                 "retain_evaluated": result.retain_evaluated, "test_count": len(fs.test)},
        "forget": {"spec": fs.spec, "kind": fs.kind, "digest": fs.digest, "count": fs.count,
                   "classes": list(fs.forget_classes), "digest_key": plan.key_fingerprint or None},
        "metrics": metrics_to_dict(result.metrics),
        "withheld": {"columns": list(result.disclosure.withheld), "why": result.disclosure.note}
        if result.disclosure.limited else None,
        "verdict": verdict.verdict,
        "forced": result.forced,
        "evidence": evidence(plan, result.metrics, verdict, result.disclosure),
        "gate": {"verdict": verdict.verdict, "evidence": verdict.evidence, "thresholds": plan.gate.to_dict(),
                 "checks": verdict.checks.to_dict(orient="records")},
        "onnx": {"max_abs_diff": result.onnx_diff, "tolerance": ONNX_TOLERANCE} if result.onnx_diff is not None
        else None,
        "timings": result.timings,
        "code_version": code_version(),
    }


def evidence(plan: UnlearnPlan, metrics: pd.DataFrame, verdict: GateResult,
             shown: Disclosure | None = None) -> dict[str, Any]:
    """What the membership test tested, its numbers per model (percent, with the interval) and what they mean.

    With figures withheld (``shown``: a small ``ids:`` request), the sentence names neither the count of
    same-class non-members (it would tell the classes) nor any model's numbers.

    Returns:
        ``{"evidence": measured|none|not tested, "tested": sentence, "models": {model: {"auc", "low", "high"}},
        "meaning": sentence, "test_accuracy": sentence}``.
    """
    fs = plan.forget
    class_wise = fs.kind == CLASS_FORGETTING
    limited = shown is not None and shown.limited
    heldout = "the" if limited else f"the {int(np.isin(fs.test.y.numpy(), np.unique(fs.forget.y.numpy())).sum())}"
    tested = (f"A membership test: can the per-sample loss tell the {fs.count} forget samples from {heldout} "
              f"test samples of the same classes (non-members, never trained on)? The number is the AUC, the "
              f"probability that a forget sample has a lower loss than a non-member of its class (classes weighted "
              f"as in the forget set): 50% is chance, higher means the forget set still looks like training data. "
              f"The interval is a 95% bootstrap interval (1000 resamples within each class, seed {plan.seed}), "
              f"widened to the spread of the AUC under 1000 within-class permutations, so that a model that never "
              f"saw a random forget set lies above chance in at most 2.5% of runs."
              + (f" Its figures are withheld: {shown.note}." if limited else ""))
    models = {}
    if not limited and all(c in metrics.columns for c in MEMBERSHIP_COLUMNS):
        models = {str(row): {"auc": float(metrics.loc[row, MEMBERSHIP_COLUMNS[0]]),
                             "low": float(metrics.loc[row, MEMBERSHIP_COLUMNS[1]]),
                             "high": float(metrics.loc[row, MEMBERSHIP_COLUMNS[2]])} for row in metrics.index}
    checks = verdict.checks.set_index("check")
    meaning = str(checks.loc["membership", "detail"]) if "membership" in checks.index else "not tested"
    if verdict.evidence == EVIDENCE_NONE:
        meaning = (f"{meaning[0].upper()}{meaning[1:]}. The verdict rests on the accuracy checks and is no proof "
                   f"that the forget set was forgotten.")
    elif verdict.evidence == EVIDENCE_NOT_TESTED and class_wise:
        meaning = (f"Class forgetting: forget accuracy against chance or the reference decides; the membership "
                   f"test is reported beside it. {meaning[0].upper()}{meaning[1:]}.")
    else:
        meaning = f"{meaning[0].upper()}{meaning[1:]}."
    return {"evidence": verdict.evidence if models or limited else EVIDENCE_NOT_TESTED, "tested": tested,
            "models": models,
            "meaning": meaning, "test_accuracy": str(checks.loc["test", "detail"]) if "test" in checks.index else ""}


def report_uri(artifact_uri: str) -> str:
    """The URI of the Markdown report among a run's artifacts at ``artifact_uri``.

    >>> report_uri("file:///mlruns/0/abc/artifacts")
    'file:///mlruns/0/abc/artifacts/report/unlearning_report.md'
    """
    return f"{artifact_uri}/{REPORT_ARTIFACT_PATH}/{MD_REPORT}"


def utc_now() -> str:
    """The current time in ISO-8601 UTC (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict[str, str | None]:
    """Versions of mlflow-unlearn, torch and mlflow, and the git commit when running from a checkout."""
    commit = None
    package_dir = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True,
                             timeout=5, check=False)
        if out.returncode == 0:
            commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"mlflow_unlearn": __version__, "git_commit": commit, "torch": torch.__version__,
            "mlflow": mlflow.__version__}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def metrics_to_dict(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{model: {metric: value}}`` from the metrics table."""
    return {str(row): {str(k): float(v) for k, v in values.items()} for row, values in metrics.iterrows()}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report."""
    parent, result, forget = report["parent"], report.get("result"), report["forget"]
    lines = [
        "# Unlearning report",
        "",
        f"**Verdict: {report['verdict'].upper()}**"
        + (" (registered although the gate failed: forced)" if report.get("forced") else "")
        + f" (membership evidence: {report['evidence']['evidence']})",
        "",
        *_evidence_lines(report["evidence"]),
        "| | |",
        "|---|---|",
        f"| Parent version | `{parent['name']}/{parent['version']}` (run `{parent.get('run_id') or 'n/a'}`) |",
        f"| Result version | `{result['name']}/{result['version']}` |" if result else "| Result version | none |",
        f"| Method | `{report['method']}` |",
        f"| Forget set | {forget['count']} samples, kind `{forget['kind']}`, "
        + (f"HMAC-SHA256 (key `{forget['digest_key']}`) `{forget['digest']}` |" if forget.get("digest_key")
           else f"SHA-256 `{forget['digest']}` |"),
        f"| Data | `{report['data']['source']}` (split seed {report['data']['seed']}, "
        f"test fraction {report['data']['test_fraction']}); retain metrics on {report['data']['retain_evaluated']} "
        f"of {report['data']['retain_count']} retain samples (seeded subset) |",
        f"| Reference | `{report['reference']}` |",
        f"| Run | `{report['run_id']}` |",
        f"| Started / finished (UTC) | {report['started_at']} / {report['finished_at']} |",
        f"| Code | mlflow-unlearn {report['code_version']['mlflow_unlearn']}, git "
        f"`{report['code_version'].get('git_commit') or 'n/a'}`, torch {report['code_version']['torch']}, "
        f"mlflow {report['code_version']['mlflow']} |",
        "",
        "The forget set is recorded only as its digest and count; no sample or sample ID is stored.",
        "",
        *([f"Figures withheld: {report['withheld']['why']}.", ""] if report.get("withheld") else []),
        "## Metrics (percent; Avg Gap in percentage points)",
        "",
    ]
    metric_names = list(dict.fromkeys(k for values in report["metrics"].values() for k in values))
    lines.append("| model | " + " | ".join(metric_names) + " |")
    lines.append("|---" * (len(metric_names) + 1) + "|")
    for model, values in report["metrics"].items():
        lines.append(f"| {model} | " + " | ".join(_fmt(values.get(m)) for m in metric_names) + " |")
    lines += ["", "## Acceptance gate", "", "| check | value | target | limit | result | detail |",
              "|---|---|---|---|---|---|"]
    for check in report["gate"]["checks"]:
        outcome = {True: "pass", False: "FAIL", None: "skipped"}[check["passed"]]
        lines.append(f"| {check['check']} | {_fmt(check['value'])} | {_fmt(check['target'])} | "
                     f"{_fmt(check['limit'])} | {outcome} | {check['detail']} |")
    lines += ["", "Thresholds: " + ", ".join(f"`{k}={v:g}`" for k, v in report["gate"]["thresholds"].items()), ""]
    lines += ["## Method config", "", "```json", json.dumps(report["config"], indent=2, sort_keys=True), "```", ""]
    if report.get("onnx"):
        lines += [f"ONNX copy: max |torch - onnxruntime| logit difference {report['onnx']['max_abs_diff']:.3g} "
                  f"(tolerance {report['onnx']['tolerance']:g}).", ""]
    timings = report.get("timings") or {}
    if timings:
        lines += ["## Wall times (s)", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in timings.items()]
        lines.append("")
    lines += [f"Plots: `{ACCURACY_PLOT}`" + ("" if report.get("withheld") else f", `{LOSS_PLOT}`") + ".", ""]
    return "\n".join(lines)


def _evidence_lines(found: Mapping[str, Any]) -> list[str]:
    """The report's opening section: the evidence in plain words."""
    lines = ["## Evidence", "", f"**What was tested.** {found['tested']}", ""]
    if found["models"]:
        lines += ["| model | AUC (%) | 95% interval (%) | reading |", "|---|---|---|---|"]
        for model, test in found["models"].items():
            if test["low"] > 50:
                reading = "tells the forget set from non-members"
            elif test["high"] < 50:
                reading = "forget set looks less like training data than non-members"
            else:
                reading = "cannot tell them apart (chance)"
            if not all(math.isfinite(v) for v in test.values()):
                reading = "not measured"
            lines.append(f"| {model} | {_fmt(test['auc'])} | {_fmt(test['low'])}-{_fmt(test['high'])} | {reading} |")
        lines.append("")
    lines += [f"**What it means.** {found['meaning']}", ""]
    if found.get("test_accuracy"):
        lines += [f"**Test accuracy.** {found['test_accuracy']}.", ""]
    if found["models"]:
        lines += [f"Loss distributions: `{LOSS_PLOT}` (forget set vs. non-members of its classes, per model).", ""]
    return lines


def plot_accuracy(metrics: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: forget / retain / test accuracy of each model (the splits whose accuracy ``metrics`` holds)."""
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(metrics.index))
    splits = [s for s in _SPLITS if f"{s}_accuracy" in metrics.columns]
    x = np.arange(len(splits))
    for i, model in enumerate(metrics.index):
        values = [float(metrics.loc[model, f"{s}_accuracy"]) for s in splits]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=str(model))
    ax.set_xticks(x, splits)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per split")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_loss_histograms(losses: Mapping[str, Mapping[str, np.ndarray]], path: Path) -> Path:
    """One panel per model: histograms of per-sample cross-entropy on the forget set and on the non-members of
    its classes (``{model: {"forget"|"heldout": losses}}``)."""
    fig = Figure(figsize=(3.2 * len(losses), 3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(losses), squeeze=False)[0]
    for ax, (model, per_split) in zip(axes, losses.items(), strict=True):
        top = max(float(np.max(v)) for v in per_split.values() if len(v)) if per_split else 1.0
        bins = np.linspace(0, max(top, 1e-3), 30)
        for split, values in per_split.items():
            ax.hist(values, bins=bins, alpha=0.6, density=True, label=_LOSS_LABELS.get(split, split))
        ax.set_title(str(model))
        ax.set_xlabel("per-sample loss")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_report(report: Mapping[str, Any], metrics: pd.DataFrame,
                 losses: Mapping[str, Mapping[str, np.ndarray]], out_dir: str | Path) -> Path:
    """Write the JSON and Markdown reports and both plots into ``out_dir``; return ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = _jsonable(dict(report))
    (out / JSON_REPORT).write_text(json.dumps(clean, indent=2, sort_keys=False, allow_nan=False))
    (out / MD_REPORT).write_text(render_markdown(clean))
    plot_accuracy(metrics, out / ACCURACY_PLOT)
    if losses:  # none for a small ids: request: the forget set's losses would describe its samples
        plot_loss_histograms(losses, out / LOSS_PLOT)
    return out
